"""ST-LPIPS in plain PyTorch: the converted weights, agreement with the original implementation (reference numbers
computed once with stlpips-pytorch 0.0.2's own LPIPS(net="alex", variant="shift_tolerant")), and the two metrics.

The converted weights come from `make install`; without them every test here skips with the command to run
(and CI=true fails the run on that skip, see ci_skips.py)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from imagegen_pipeline.ml.metrics import MetricContext, MetricUnavailable, compute_metrics, list_metrics
from imagegen_pipeline.ml.metrics import lpips_diversity as lpips_diversity_module
from imagegen_pipeline.ml.metrics import lpips_weights
from imagegen_pipeline.ml.metrics.lpips import LPIPS, default_lpips, mean_pairwise_lpips, sq_distances
from imagegen_pipeline.ml.metrics.lpips_memorization import nearest_lpips


@pytest.fixture(scope="module")
def net() -> LPIPS:
    try:
        return default_lpips()
    except lpips_weights.MissingLPIPSWeights as exc:
        pytest.skip(str(exc))


def pattern(size: int) -> torch.Tensor:
    """A deterministic RGB test card in [0, 1], (1, 3, size, size); the reference numbers below use it."""
    i = torch.arange(size, dtype=torch.float64)
    a = 0.5 + 0.5 * torch.sin(i[:, None] / 3.0) * torch.cos(i[None, :] / 5.0)
    b = 0.5 + 0.5 * torch.cos((i[:, None] + 2 * i[None, :]) / 4.0)
    c = ((i[:, None] + i[None, :]) % 16) / 15.0
    return torch.stack([a, b, c]).float()[None]


def shapes(n: int, seed: int, size: int = 32) -> np.ndarray:
    """uint8 (n, 1, size, size) grey images of a random rectangle and a random disc: varied, structured 'data'."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, 1, size, size), np.uint8)
    for k in range(n):
        img = np.full((size, size), rng.integers(0, 60), np.uint8)
        x0, y0 = rng.integers(0, size - 8, 2)
        w, h = rng.integers(4, size // 2, 2)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(120, 256)
        cx, cy, r = *rng.integers(4, size - 4, 2), rng.integers(3, size // 4)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = rng.integers(60, 256)
        out[k, 0] = img
    return out


# ---- the network -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, reference", [("roll3", 0.051419), ("flip", 0.140921), ("grey_roll2", 0.005542),
                                             ("32px_roll2_upsampled", 0.116819)])
def test_distances_equal_the_original_stlpips_implementation(net, one_thread, name, reference):
    """Figures of stlpips' own LPIPS(net='alex', variant='shift_tolerant')(x, y, normalize=True) on fixed images
    (the 32-px case on both images bilinearly upsampled to 64 px first, as this module does by itself)."""
    p = pattern(64)
    pairs = {"roll3": (p, torch.roll(p, 3, -1)), "flip": (p, p.flip(-1)),
             "grey_roll2": (p[:, :1], torch.roll(p[:, :1], 2, -2)),
             "32px_roll2_upsampled": (pattern(32), torch.roll(pattern(32), 2, -1))}
    x, y = pairs[name]
    with torch.no_grad():
        assert float(net.distance(x, y)) == pytest.approx(reference, abs=2e-6)


def test_identical_images_are_at_zero_and_a_shift_or_noise_is_farther_than_a_slight_perturbation(net, one_thread):
    """0 for identical; a 1-level perturbation is far closer than a 4-pixel shift or heavy noise; grey = RGB."""
    img = torch.from_numpy(shapes(4, seed=0))  # uint8 (4, 1, 32, 32)
    rng = torch.Generator().manual_seed(0)
    slight = (img.int() + torch.randint(-1, 2, img.shape, generator=rng)).clamp(0, 255).to(torch.uint8)
    noised = (img.int() + torch.randint(-60, 61, img.shape, generator=rng)).clamp(0, 255).to(torch.uint8)
    shifted = torch.roll(img, (4, 4), (-2, -1))
    with torch.no_grad():
        same = net.distance(img, img)
        d_slight, d_noise, d_shift = net.distance(img, slight), net.distance(img, noised), net.distance(img, shifted)
        as_float = net.distance(img.float() / 255, slight.float() / 255)
        as_rgb = net.distance(img.repeat(1, 3, 1, 1), slight.repeat(1, 3, 1, 1))
    assert torch.equal(same, torch.zeros(4))
    assert (d_slight < 0.01).all() and (d_noise > 5 * d_slight).all() and (d_shift > 5 * d_slight).all()
    torch.testing.assert_close(as_float, d_slight)
    torch.testing.assert_close(as_rgb, d_slight)
    with pytest.raises(ValueError, match="one shape"):
        net.distance(img, img[:, :, :16])


def test_embedding_distances_are_lpips_and_pair_means_are_exact(net, one_thread):
    """|e_x - e_y|^2 is LPIPS (non-negative weights), and the O(N D) all-pairs mean equals the brute-force one."""
    imgs = torch.from_numpy(shapes(6, seed=1))
    e = net.embed(imgs, batch_size=4)
    with torch.no_grad():
        direct = torch.stack([net.distance(imgs[i:i + 1].expand(6, -1, -1, -1), imgs) for i in range(6)])  # (6, 6)
    torch.testing.assert_close(sq_distances(e, e), direct, atol=1e-5, rtol=1e-4)
    brute = direct[~torch.eye(6, dtype=torch.bool)].double().mean()
    assert mean_pairwise_lpips(e) == pytest.approx(float(brute), rel=1e-4)


def test_gradients_flow_to_float_inputs(net, one_thread):
    """The projection optimises through LPIPS: float inputs get a non-zero gradient, the weights none."""
    x = (torch.from_numpy(shapes(2, seed=2)).float() / 255).requires_grad_(True)
    net.distance(x, torch.from_numpy(shapes(2, seed=3))).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


# ---- the weights -------------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("stlpips_pytorch") is None, reason="stlpips-pytorch not installed "
                    "(`make install` installs it from requirements-data.txt)")
def test_conversion_checks_the_sha256_and_writes_safetensors_the_loader_accepts(tmp_path, net):
    """convert() reads the pinned .pth (weights_only) into a safetensors equal to the installed conversion; a file
    with another sha256 is refused, and a missing converted file names the command that makes it."""
    out = lpips_weights.convert(out=tmp_path / "w.safetensors")
    assert lpips_weights.read_metadata(out)["source_sha256"] == lpips_weights.SOURCE_SHA256
    state = lpips_weights.load_converted(out)
    assert set(state) == set(net.state_dict())
    for k, v in net.state_dict().items():
        assert torch.equal(state[k], v), k
    bad = tmp_path / "bad.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, bad)
    with pytest.raises(lpips_weights.MissingLPIPSWeights, match="sha256"):
        lpips_weights.convert(source=bad, out=tmp_path / "x.safetensors")
    with pytest.raises(lpips_weights.MissingLPIPSWeights, match=r"python -m imagegen_pipeline\.lpips_weights"):
        LPIPS.from_file(tmp_path / "nowhere.safetensors")


def test_missing_weights_make_the_metrics_unavailable_with_the_command(monkeypatch):
    """No converted file: the metric is skipped (MetricUnavailable) with the conversion command, not a crash."""
    def missing(*a, **k):
        raise lpips_weights.MissingLPIPSWeights(lpips_weights.how_to_provide())

    monkeypatch.setattr(lpips_diversity_module, "default_lpips", missing)
    imgs = shapes(4, seed=0)
    out = compute_metrics(["lpips_diversity"], MetricContext(fake_images=imgs, real_images=imgs))
    assert "lpips_weights" in out["skipped"]["lpips_diversity"] and not out["results"]


# ---- the metrics -------------------------------------------------------------------------------------------

def test_a_collapsed_sample_set_scores_lower_lpips_diversity_than_real(net, one_thread):
    """Samples that are one picture (plus 1-level noise) per class: ratio far below 1; fresh draws of the data: ~1."""
    assert {"lpips_diversity", "lpips_memorization"} <= set(list_metrics())
    real, labels = shapes(40, seed=10), np.repeat([0, 1], 20)
    rng = np.random.default_rng(0)
    one = shapes(2, seed=11)
    collapsed = np.clip(one[labels].astype(int) + rng.integers(-1, 2, (40, 1, 32, 32)), 0, 255).astype(np.uint8)
    ctx = dict(real_images=real, real_labels=labels, fake_labels=labels, class_names=["a", "b"],
               extra={"lpips_diversity_images": 12})
    bad = compute_metrics(["lpips_diversity"], MetricContext(fake_images=collapsed, **ctx))["results"]
    good = compute_metrics(["lpips_diversity"], MetricContext(fake_images=shapes(40, seed=12), **ctx))["results"]
    assert bad["lpips_diversity_ratio"] < 0.1 < 0.6 < good["lpips_diversity_ratio"] < 1.6
    assert set(bad["lpips_diversity_per_class"]) == {"a", "b"} and bad["lpips_diversity_images_per_class"] == 12
    assert bad["lpips_variant"] == "ST-LPIPS alex v0.0.2"


def test_lpips_memorization_flags_shifted_copies_of_training_images(net, one_thread):
    """Samples that are training images moved by a pixel sit far nearer the training set than held-out images
    (ratio well below 1); fresh samples do not (ratio near 1). Without training images: skipped, saying so."""
    train, heldout = shapes(48, seed=20), shapes(16, seed=21)
    copies = np.roll(train[:16], 1, axis=-1)
    fresh = shapes(16, seed=22)
    base = dict(real_images=heldout, train_images=train, extra={"lpips_memorization_samples": 16})
    copied = compute_metrics(["lpips_memorization"], MetricContext(fake_images=copies, **base))["results"]
    honest = compute_metrics(["lpips_memorization"], MetricContext(fake_images=fresh, **base))["results"]
    assert copied["lpips_memorization_ratio"] < 0.3 and 0.6 < honest["lpips_memorization_ratio"] < 1.6
    assert copied["lpips_memorization_subsample"] == {"samples": 16, "heldout": 16, "train": 48, "of_samples": 16,
                                                      "of_heldout": 16, "of_train": 48}
    closest = copied["lpips_memorization_closest"][0]
    assert closest["train"] == closest["sample"]  # sample i is a copy of training image i
    with pytest.raises(MetricUnavailable, match="train_images"):
        compute_metrics(["lpips_memorization"], MetricContext(fake_images=copies, real_images=heldout),
                        skip_unavailable=False)


def test_nearest_lpips_streams_training_images_and_finds_the_exact_match(net, one_thread):
    train = shapes(10, seed=30)
    d, idx = nearest_lpips(train[[7, 2]], train, batch_size=3)
    assert idx.tolist() == [7, 2] and np.allclose(d, 0.0, atol=1e-6)
