"""prompt_gallery (best-of-K grids per prompt from a text-conditioned generator) and the text-model path of the
evaluation (held-out captions, R-precision)."""

from __future__ import annotations

import html
import http.cookiejar
import json
import shutil
import sqlite3
import threading
import urllib.request

import dagster as dg
import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from imagegen_pipeline.defs.evaluation import evaluation_report
from imagegen_pipeline.defs.gallery import sample_gallery
from imagegen_pipeline.defs.prompts import prompt_gallery
from imagegen_pipeline.stages.prompt_gallery import grid_file
from imagegen_pipeline.ml import evaluation as core
from imagegen_pipeline.ml.dcgan import DCGANConfig, Generator, export_generator
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.ml.composite_prompts import concept_shares, mentions
from imagegen_pipeline.ml.composite_prompts import prompts as composite_prompts
from imagegen_pipeline.ml.quality_gate import QualityGate, gate_failures
from imagegen_pipeline.net import free_port
from imagegen_pipeline.review.server import build_app, make_server
from imagegen_pipeline.review.store import PromptAnswer, ReviewStore, review_summary, reviews_db
from imagegen_pipeline.stages.evaluation import human_results
from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline_tests.test_review import request
from imagegen_pipeline_tests.test_text import (  # noqa: F401  (module fixtures: the emoji slice, a 4-step text GAN)
    emoji_slice, materialize, needs_emoji, synthetic_bank, text_model)

PROMPTS = ["a cat with a hat", "<script>alert('x')</script> & a \"heart\""]
TINY_PROMPTS = {"prompts": PROMPTS, "images_per_prompt": 2, "candidates": 2, "device": "cpu"}
TINY_EVAL = {"device": "cpu", "num_samples": 16, "num_real": 12, "per_class_min": 2, "detector_batch_size": 16,
             "composite_images": 1, "composite_candidates": 2}  # 16 prompts x 2 candidates: ~50 extractor passes


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


def test_a_concept_counts_when_a_picks_nearest_captions_name_it_as_a_whole_word():
    assert mentions("cowboy hat face", ("hat",)) and mentions("top hats", ("top hat", "hat"))
    assert not mentions("that", ("hat",)) and not mentions("chat bubble", ("hat",))
    shares = concept_shares([["cat face", "top hat"], ["cat"], ["crown"], ["that cow"]], ("cat",), ("hat",))
    assert shares == {"subject_share": 0.5, "accessory_share": 0.25, "both_share": 0.25}


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


@pytest.mark.slow
@needs_emoji
def test_text_model_evaluation_samples_held_out_captions_and_reports_r_precision(text_model, instance):
    """evaluate_job's assets on a text model: FID as for any model, plus R-precision against 99 distractors, the
    gate's prompt-fidelity check, the composite prompts (issue 27.4: figures, grids, MLflow metrics) and the human
    prompt-match figure beside them; the class-grid gallery steps aside for prompt_gallery instead of failing."""
    paths, _ = text_model
    db = reviews_db(paths, "emoji")  # one reviewer said the picture for "a cat with a hat" shows it
    ReviewStore(db).add_prompt(PromptAnswer("eval-test", "imagegen-generator-emoji", "1", "a cat with a hat", True, 0,
                                            True, "reviewer.eval-test"))
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

    # the gate judged prompt fidelity (a text model), against the real images' R-precision
    gate = report["quality_gate"]
    assert gate["thresholds"]["min_r_precision_of_real"] == 0.3
    assert gate["failures"] == gate_failures(report["results"], QualityGate(**gate["thresholds"]), conditioning="text")
    fidelity = [f for f in gate["failures"] if "prompts" in f or "prompt fidelity" in f]
    r, real = report["results"]["r_precision"], report["results"]["r_precision_real"]
    assert bool(fidelity) == (r < 0.3 * real)
    # composite prompts: every prompt, its best-of-2 pick beside its nearest training image
    composite = report["composite_prompts"]
    assert [row["prompt"] for row in composite["prompts"]] == composite_prompts()
    assert (composite["settings"]["candidates"], composite["settings"]["images_per_prompt"]) == (2, 1)
    for row in composite["prompts"]:
        assert len(row["picks"]) == 1 and 0 <= row["both_share"] <= min(row["subject_share"], row["accessory_share"])
        assert all(len(p["nearest_captions"]) == 5 and 0 <= p["nn_distance"] <= 2 for p in row["picks"])
        assert Image.open(paths.reports("emoji") / "eval-v1" / row["file"]).size == (2 * 66 + 2, 66 + 2)
    assert meta["composite_concept_share"] == pytest.approx(np.mean([r["both_share"] for r in composite["prompts"]]),
                                                            abs=1e-5)
    assert "**Composite prompts**" in meta["summary"] and "| a cat with a hat |" in meta["summary"]
    page = (paths.reports("emoji") / "eval-v1" / "report.html").read_text()
    assert "<h2>Composite prompts</h2>" in page and "src='composite/00-a-cat-with-a-hat.png'" in page
    # the human figure beside the judge's: the answer stored above
    [cat] = [row for row in composite["prompts"] if row["prompt"] == "a cat with a hat"]
    assert cat["human_yes"] >= 1 and cat["human_answers"] >= 1
    human = review_summary(db, model_version="1")
    assert report["results"]["human_prompt_match_rate"] == human["prompt_match_rate"] is not None
    assert "| human_prompt_match_rate |" in meta["summary"]
    # in MLflow: the figures as metrics of the evaluation run, the grids as its artifacts
    client = mlflow.MlflowClient(f"sqlite:///{paths.mlruns / 'mlflow.db'}")
    run = client.get_model_version("imagegen-generator-emoji", "1").tags["imagegen.evaluation_run"]
    assert client.get_run(run).data.metrics["eval_composite_concept_share"] == pytest.approx(
        meta["composite_concept_share"], abs=1e-5)
    assert "evaluation/composite/00-a-cat-with-a-hat.png" in {
        a.path for a in client.list_artifacts(run, "evaluation/composite")}


@needs_emoji
def test_the_review_page_asks_whether_pictures_show_their_prompts_once_per_reviewer(text_model, tmp_path):
    """Issue 27.4: through the real server, the prompt questions come after the pairs, composite prompts first,
    each a picture generated for its prompt. A yes/no is stored once per reviewer and picture: a second answer
    from the same reviewer gets 409 and the first stands; another reviewer counts. The yes share is the report's
    human_prompt_match_rate."""
    src, _ = text_model
    paths = DataPaths.from_home(tmp_path / "home")
    shutil.copytree(src.home, paths.home, ignore=shutil.ignore_patterns("reviews"))  # its own answers file
    app = build_app(paths, "emoji", n=1, questions=18, quiet=True)
    server = make_server(app, port=free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    first, second = http.cookiejar.CookieJar(), http.cookiejar.CookieJar()
    try:
        status, listing = request(base, "GET", "/api/items", jar=first)
        asked = listing["questions"]
        assert status == 200 and len(listing["items"]) == 1 and len(asked) == 18
        assert sorted(q["prompt"] for q in asked[:16]) == sorted(composite_prompts())
        assert not {q["prompt"] for q in asked[16:]} & set(composite_prompts())  # then held-out real captions
        with urllib.request.urlopen(base + asked[0]["picture"], timeout=10) as resp:
            assert resp.headers["Content-Type"] == "image/png" and Image.open(resp).size == (64, 64)
        assert request(base, "GET", f"/img/{listing['items'][0]['id']}/picture.png")[0] == 404

        def answer(body: dict, jar) -> tuple[int, dict]:
            return request(base, "POST", "/api/prompt_answer", json.dumps(body).encode(), jar=jar)

        question = asked[0]["id"]
        for bad in ({"item": question, "shows": "yes"}, {"item": question}, {"item": "nope", "shows": True},
                    {"item": listing["items"][0]["id"], "shows": True}, {"item": question, "shows": True, "x": 1}):
            status, error = answer(bad, first)
            assert status == 400 and error["error"], bad
        assert answer({"item": question, "shows": True}, first)[0] == 201
        status, error = answer({"item": question, "shows": False}, first)
        assert status == 409 and "already has your answer" in error["error"] and "first one stands" in error["error"]
        assert request(base, "GET", "/api/items", jar=second)[0] == 200
        assert answer({"item": question, "shows": False}, second)[0] == 201
        summary = request(base, "GET", "/api/summary")[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    stored = rows_of(reviews_db(paths, "emoji"), "prompt_answers")
    assert [(r["prompt"], r["shows"], r["composite"], r["model_version"]) for r in stored] == [
        (asked[0]["prompt"], 1, 1, "1"), (asked[0]["prompt"], 0, 1, "1")]
    assert len({r["reviewer"] for r in stored}) == 2 and not rows_of(reviews_db(paths, "emoji"), "answers")
    assert summary["prompt_questions"]["answers"] == 2 and summary["prompt_questions"]["composite_yes"] == 1
    assert summary["prompt_questions"]["by_prompt"][asked[0]["prompt"]] == {"answers": 2, "yes": 1, "composite": True}
    assert (summary["answers"], summary["prompt_match_answers"], summary["prompt_match_rate"]) == (0, 2, 0.5)
    # what the evaluation report takes from it (no fooling rate: no pair was answered)
    figures = human_results(review_summary(reviews_db(paths, "emoji"), model_version="1"))
    assert figures == {"human_prompt_match_rate": 0.5, "human_prompt_match_answers": 2}
    assert "| human_prompt_match_rate | 0.5 |" in core.report_markdown("emoji v1", figures, {})


def rows_of(db, table: str) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        conn.close()
