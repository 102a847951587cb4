"""prompt_gallery (best-of-K grids per prompt from a text-conditioned generator) and the text-model path of the
evaluation (held-out captions, R-precision)."""

from __future__ import annotations

import html
import json
import shutil

import dagster as dg
import numpy as np
import pytest
import torch

from imagegen_pipeline.defs.evaluation import evaluation_report
from imagegen_pipeline.defs.gallery import sample_gallery
from imagegen_pipeline.defs.prompts import prompt_gallery
from imagegen_pipeline.stages.prompt_gallery import grid_file
from imagegen_pipeline.ml import evaluation as core
from imagegen_pipeline.ml.dcgan import DCGANConfig, Generator, export_generator
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline_tests.test_text import (  # noqa: F401  (module fixtures: the emoji slice, a 4-step text GAN)
    emoji_slice, materialize, needs_emoji, synthetic_bank, text_model)

PROMPTS = ["a cat with a hat", "<script>alert('x')</script> & a \"heart\""]
TINY_PROMPTS = {"prompts": PROMPTS, "images_per_prompt": 2, "candidates": 2, "device": "cpu"}
TINY_EVAL = {"device": "cpu", "num_samples": 16, "num_real": 12, "per_class_min": 2, "detector_batch_size": 16}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return failure.step_failure_data.error.message


# ---- plain helpers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, m, expected", [(4, 3, [0, 1, 2, 0]), (3, 3, [0, 1, 2]), (2, 1, [0, 0])])
def test_caption_rows_use_every_held_out_caption_in_turn_when_samples_outnumber_them(n, m, expected):
    assert core.caption_rows(n, m, seed=0).tolist() == expected


def test_caption_rows_pick_a_seeded_subset_of_many_captions():
    rows = core.caption_rows(5, 100, seed=3)
    assert len(set(rows.tolist())) == 5 and rows.tolist() == sorted(rows.tolist())
    assert rows.tolist() == core.caption_rows(5, 100, seed=3).tolist()


def test_grid_file_names_are_safe_and_readable():
    assert grid_file(0, "a cat with a hat") == "00-a-cat-with-a-hat.png"
    assert grid_file(12, "../../etc/<passwd>") == "12-etc-passwd.png"
    assert grid_file(3, "!!!") == "03-prompt.png"


def test_text_models_cannot_be_sampled_for_evaluation_without_captions():
    cfg = DCGANConfig(resolution=32, channels=1, ngf=4, ndf=4, conditioning="text", text_dim=8)
    generator = Generator(cfg)
    runtime = resolve_runtime("cpu")
    with pytest.raises(ValueError, match="held-out captions"):
        core.sample_for_eval(generator, cfg, 4, seed=0, runtime=runtime)
    conds = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    images, labels = core.sample_for_eval(generator, cfg, 4, seed=0, runtime=runtime, text_conds=conds)
    assert images.shape == (4, 32, 32, 1) and labels is None
    # sample i is drawn for caption i % 3: samples 0 and 3 share a caption but not a seed
    with torch.no_grad():
        expected = core.generate(generator, cfg, seeds=[3], cond=conds[0], runtime=runtime)
    np.testing.assert_array_equal(images[3], expected[0])


def test_text_r_precision_is_perfect_for_faithful_samples_and_reports_chance_and_the_real_ceiling():
    bank, (img_c, txt_c) = synthetic_bank(n_topics=40, per_topic=3)
    out = core.text_r_precision(bank, img_c, txt_c, real_embeddings=img_c[::-1].copy(), neighbours=3)
    assert out["r_precision"] == 1.0 and out["r_precision_chance"] == pytest.approx(1 / 40)
    assert out["r_precision_real"] < 0.3  # images shuffled against their captions: near chance


# ---- the assets on a tiny text model -------------------------------------------------------------------------

@needs_emoji
def test_prompt_gallery_writes_a_grid_per_prompt_and_an_escaped_index(text_model, instance):
    """Each prompt gets a best-of-K grid; the page and the metadata table show prompts escaped, never as HTML."""
    paths, _ = text_model
    result = materialize([prompt_gallery], paths, instance, {"prompt_gallery": {"config": TINY_PROMPTS}})
    assert result.success, failure_message(result)
    out_dir = paths.reports("emoji") / "prompts" / "v1"
    grids = sorted(p.name for p in out_dir.glob("[0-9][0-9]-*.png"))
    assert grids == ["00-a-cat-with-a-hat.png", "01-script-alert-x-script-a-heart.png"]
    page = (out_dir / "index.html").read_text()
    assert "<script>" not in page and html.escape(PROMPTS[1]) in page and "00-a-cat-with-a-hat.png" in page
    scores = json.loads((out_dir / "prompts.json").read_text())
    [cat, heart] = scores["prompts"]
    assert cat["prompt"] == PROMPTS[0] and len(cat["scores"]) == 2 == len(cat["nearest"])
    assert cat["scores"] == sorted(cat["scores"], reverse=True) and all(-1 <= s <= 1 for s in cat["scores"])
    assert len({s // 2 for s in cat["seeds"]}) == 2  # one winner from each group of 2 candidates
    [mat] = result.asset_materializations_for_node("prompt_gallery")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert "| prompt | mean score | best image's nearest caption |" in meta["prompts"]
    assert "a cat with a hat" in meta["prompts"] and "&lt;script&gt;" in meta["prompts"]
    assert "data:image/png;base64," in meta["preview"] and meta["index"] == str(out_dir / "index.html")


@needs_emoji
def test_prompt_gallery_refuses_a_generator_that_is_not_text_conditioned(text_model, tmp_path, instance):
    src, _ = text_model
    paths = DataPaths.from_home(tmp_path)
    shutil.copytree(src.data, paths.data)
    cfg = DCGANConfig(resolution=64, channels=3, ngf=8, ndf=8, conditioning="none")
    export_generator(Generator(cfg), cfg, paths.models("emoji"))
    result = materialize([prompt_gallery], paths, instance, {"prompt_gallery": {"config": TINY_PROMPTS}})
    assert not result.success
    assert "not on text" in failure_message(result) and "--conditioning text" in failure_message(result)


@needs_emoji
def test_text_model_evaluation_samples_held_out_captions_and_reports_r_precision(text_model, instance):
    """evaluate_job's assets on a text model: FID as for any model, plus R-precision against 99 distractors; the
    class-grid gallery steps aside for prompt_gallery instead of failing the run."""
    paths, _ = text_model
    result = materialize([evaluation_report, sample_gallery], paths, instance,
                         {"evaluation_report": {"config": TINY_EVAL}, "sample_gallery": {"config": {"device": "cpu"}}})
    assert result.success, failure_message(result)
    [gallery] = result.asset_materializations_for_node("sample_gallery")
    assert "prompt_gallery" in gallery.metadata["skipped"].value
    [mat] = result.asset_materializations_for_node("evaluation_report")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert isinstance(meta["fid"], float) and 0 <= meta["r_precision"] <= 1 and 0 <= meta["r_precision_real"] <= 1
    assert "| r_precision |" in meta["summary"]
    report = json.loads((paths.reports("emoji") / "eval-v1" / "report.json").read_text())
    assert report["results"]["r_precision"] == pytest.approx(meta["r_precision"], abs=1e-5)
    assert 0 < report["results"]["r_precision_chance"] <= 0.5
    assert "conditional_accuracy" in report["results"]  # each caption's val image class is the asked-for class
    # R-precision is held out: no val caption was in the train split the generator learned from
    from imagegen_pipeline.ml.shard_reader import ShardReader

    reader = ShardReader(paths.shards("emoji"))
    train, val = (set(reader.read_column(split, "caption")) for split in ("train", "val"))
    assert val and not (train & val), sorted(train & val)[:5]
    assert report["results"]["val_captions_seen_in_train"] == 0
