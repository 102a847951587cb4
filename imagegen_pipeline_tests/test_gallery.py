"""The sample gallery: fixed-seed PNG grids and an index.html that links them, in plain PyTorch and as an asset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import pytest
import torch
from PIL import Image

from imagegen_pipeline.datasets import import_dataset
from imagegen_pipeline.defs.dcgan import dcgan_checkpoint
from imagegen_pipeline.defs.extractor import feature_extractor, image_embeddings
from imagegen_pipeline.defs.gallery import gallery_assets, sample_gallery
from imagegen_pipeline.stages.gallery import LATEST_FILE
from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker, TrainingLauncher
from imagegen_pipeline.ml.dcgan import DCGANConfig, Generator
from imagegen_pipeline.ml.extractor import build_extractor, embed_images
from imagegen_pipeline.ml.gallery import build_gallery, slugify
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline_tests.conftest import materialization_metadata, run_ingest
from imagegen_pipeline_tests.test_dcgan_asset import TINY_GAN
from imagegen_pipeline_tests.test_features_assets import TINY_EXTRACTOR

SMALL = {"seeds_per_class": 4, "fixed_seed_count": 12, "interpolation_rows": 2, "interpolation_steps": 4,
         "nn_samples": 6}


@pytest.fixture(scope="module")
def tiny():
    """An untrained 3-class generator, a random extractor and 12 'training' images with their embeddings."""
    torch.manual_seed(0)
    cfg = DCGANConfig(ngf=8, ndf=8, conditioning="class", num_classes=3)
    runtime = resolve_runtime("cpu")
    extractor = build_extractor(3, pretrained=False, input_size=32)
    train = torch.randint(0, 256, (12, 1, 32, 32), dtype=torch.uint8)
    emb, _ = embed_images(extractor, train, runtime=runtime)
    return Generator(cfg).eval(), cfg, runtime, extractor, train, emb


def linked_files(index: Path) -> set[str]:
    return set(re.findall(r'<img src="([^"]+)"', index.read_text(encoding="utf-8")))


def pngs_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.png")}


@pytest.mark.parametrize("name, slug", [
    ("Cat", "cat"), ("a/b", "a-b"), ("..", "class"), ("../../etc/passwd", "etc-passwd"), ("🐱", "class"),
    ("Crème brûlée", "creme-brulee"), ("x" * 100, "x" * 40), ("", "class"), ("C:\\win", "c-win"),
])
def test_slugify_gives_safe_file_names(name, slug):
    """Any class name becomes [a-z0-9-]+, never empty, '.', '..' or a path."""
    assert slugify(name) == slug


def test_gallery_writes_linked_pngs_with_safe_names_and_a_reproducible_fixed_grid(tiny, tmp_path):
    """Every PNG is linked from index.html, hostile class names stay inside out_dir and are escaped, and two
    builds of the same model give byte-identical fixed-seed grids."""
    generator, cfg, runtime, extractor, train, emb = tiny
    names = ["<b>a/b</b>", "..", "🐱 cat"]
    out = tmp_path / "gallery" / "v1"
    result = build_gallery(generator, cfg, out_dir=out, runtime=runtime, class_names=names, train_images_uint8=train,
                           train_embeddings=emb, extractor=extractor, model_name="imagegen-generator-toy",
                           model_version=7, **SMALL)

    assert result["per_class_count"] == 3 and result["notes"] == []
    assert [p["file"] for p in result["per_class"]] == ["per_class/0_b-a-b-b.png", "per_class/1_class.png",
                                                        "per_class/2_cat.png"]
    assert all(f.resolve().is_relative_to(out.resolve()) for f in tmp_path.rglob("*") if f.is_file())
    assert pngs_under(out) == {"fixed_seeds.png", "by_label.png", "interpolations.png", "nearest_neighbours.png",
                               *(p["file"] for p in result["per_class"])}
    by_label = Image.open(out / "by_label.png")  # one row per class, one column per seed
    per_class = Image.open(out / result["per_class"][0]["file"])
    assert by_label.height > 2.5 * per_class.height
    assert linked_files(out / "index.html") == pngs_under(out)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "imagegen-generator-toy v7" in page and "&lt;b&gt;a/b&lt;/b&gt;" in page and "<b>a/b" not in page
    assert "🐱 cat" in page
    nn = result["nearest_neighbours"]
    assert nn["samples"] == 6 and nn["mean_distance"] >= 0
    assert result["fixed_seeds"]["labels"] == [i % 3 for i in range(12)]

    again = build_gallery(generator, cfg, out_dir=tmp_path / "again", runtime=runtime, class_names=names, **SMALL)
    assert (tmp_path / "again" / "fixed_seeds.png").read_bytes() == (out / "fixed_seeds.png").read_bytes()
    assert (tmp_path / "again" / "per_class/2_cat.png").read_bytes() == (out / "per_class/2_cat.png").read_bytes()
    # without an extractor the neighbour panel is skipped with a note, and nothing links to it
    assert "nearest_neighbours.png" not in pngs_under(tmp_path / "again")
    assert any("no a feature extractor" in n for n in again["notes"])
    assert linked_files(tmp_path / "again" / "index.html") == pngs_under(tmp_path / "again")


def test_unconditional_generator_gets_one_grid_and_mismatched_names_are_refused(tmp_path):
    """An unconditional model has one 'all' grid; a class model given the wrong number of names is an error."""
    runtime = resolve_runtime("cpu")
    cfg = DCGANConfig(ngf=8, ndf=8)
    result = build_gallery(Generator(cfg), cfg, out_dir=tmp_path / "u", runtime=runtime, class_names=[], **SMALL)
    assert [p["file"] for p in result["per_class"]] == ["per_class/all.png"]
    assert linked_files(tmp_path / "u" / "index.html") == pngs_under(tmp_path / "u")
    ccfg = DCGANConfig(ngf=8, ndf=8, conditioning="class", num_classes=3)
    with pytest.raises(ValueError, match="3 classes but 2 class names"):
        build_gallery(Generator(ccfg), ccfg, out_dir=tmp_path / "c", runtime=runtime, class_names=["a", "b"])


@pytest.mark.slow
def test_sample_gallery_asset_writes_a_versioned_gallery_and_a_latest_pointer(paths, instance, mlflow_uri):
    """After ingest, DCGAN and embeddings, sample_gallery writes reports/mnist/gallery/v1/ with every file linked,
    latest.json pointing at it, and metadata with the preview, counts and neighbour distance."""
    import_dataset("mnist", paths, limit=200)
    assert run_ingest(instance, "mnist").success
    resources = {"storage": ImagegenStorage(home=str(paths.home)), "mlflow_tracker": MlflowTracker(),
                 "training": TrainingLauncher()}
    gallery_config = {"config": {"device": "cpu", **SMALL}}
    result = dg.materialize(
        [feature_extractor, image_embeddings, dcgan_checkpoint, *gallery_assets], partition_key="mnist",
        instance=instance, resources=resources,
        run_config={"ops": {"feature_extractor": {"config": {**TINY_EXTRACTOR, "train_baseline": False}},
                            "image_embeddings": {"config": {"device": "cpu", "batch_size": 64}},
                            "dcgan_checkpoint": {"config": TINY_GAN},
                            "sample_gallery": gallery_config}})
    assert result.success
    meta = materialization_metadata(result, "sample_gallery")
    out = paths.reports("mnist") / "gallery" / "v1"
    assert meta["per_class_grids"] == 10 and meta["generator_version"] == "1"
    assert meta["registered_model"] == "imagegen-generator-mnist v1"
    assert meta["index"] == str(out / "index.html") and "data:image/png;base64," in meta["fixed_seeds"]
    assert meta["nn_distance_mean"] is not None and meta["nn_distance_mean"] >= 0 and "notes" not in meta
    assert json.loads((out.parent / LATEST_FILE).read_text())["folder"] == "v1"
    assert "nearest_neighbours.png" in pngs_under(out) and len(pngs_under(out)) == 14
    assert linked_files(out / "index.html") == pngs_under(out)

    first = (out / "fixed_seeds.png").read_bytes()
    again = dg.materialize([sample_gallery], partition_key="mnist", instance=instance, resources=resources,
                           run_config={"ops": {"sample_gallery": gallery_config}})
    assert again.success and (out / "fixed_seeds.png").read_bytes() == first
