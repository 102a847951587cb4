"""The diffusion family's core (EDM denoiser, Heun sampler with guidance, resumable loop, export) and the GPU
presets script's --smoke path: tiny images, few steps, on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imagegen_pipeline.ml.dcgan.sample import generate
from imagegen_pipeline.ml.dcgan.train import TrainData
from imagegen_pipeline.ml.diffusion import DiffusionConfig, DiffusionGenerator, train_diffusion
from imagegen_pipeline.ml.diffusion import load_diffusion
from imagegen_pipeline.ml.runtime import resolve_runtime

ROOT = Path(__file__).resolve().parent.parent


def tiny(**kw) -> DiffusionConfig:
    base = dict(resolution=8, channels=1, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(),
                dropout=0.0, batch_size=64, steps=400, lr=2e-3, lr_warmup=50, ema_halflife_kimg=2,
                sample_every=10**6, checkpoint_every=10**6, log_every=100, sample_steps=12, num_samples=8)
    return DiffusionConfig(**{**base, **kw})


def two_modes(n: int = 512) -> TrainData:
    """Label 0: dark 8x8 images (about -0.7), label 1: bright ones (about +0.7), a little pixel noise."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    base = torch.where(labels[:, None, None, None] == 0, 40.0, 215.0)
    images = (base + torch.randn(n, 1, 8, 8, generator=g) * 8).clamp(0, 255).to(torch.uint8)
    return TrainData(images, labels)


@pytest.mark.slow
def test_diffusion_learns_a_two_mode_distribution_and_follows_its_label(tmp_path, two_threads):
    """A class model draws the asked-for mode; its null condition (what guidance contrasts with) draws both."""
    cfg = tiny(conditioning="class", num_classes=2)
    result = train_diffusion(cfg, two_modes(), out_dir=tmp_path, runtime=resolve_runtime("cpu"))
    model, loaded = load_diffusion(result.generator_path)
    assert loaded == cfg and result.final_step == cfg.steps
    z = torch.randn(200, cfg.z_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        bright = model(z, torch.ones(200, dtype=torch.int64)).mean((1, 2, 3))
        dark = model(z, torch.zeros(200, dtype=torch.int64)).mean((1, 2, 3))
        free = model(z, None).mean((1, 2, 3))
    assert (bright > 0.4).float().mean() > 0.95 and (dark < -0.4).float().mean() > 0.95
    near_a_mode = ((free.abs() - 0.69).abs() < 0.2).float().mean()
    assert near_a_mode > 0.9, f"null-condition samples between the modes: {free[:10]}"
    # both modes drawn: a collapse puts (nearly) all on one side. The split itself moves with the float sums' order:
    # 400 steps at 2 threads gave a split inside 0.25-0.75, at 1 thread (a `make test` worker's share) 0.84
    assert 0.1 < (free > 0).float().mean() < 0.9, "the null condition collapsed onto one mode"


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    """3 steps, a stop, 3 more (with steps raised on resume) == 6 steps at once, tensor for tensor."""
    data = two_modes(64)
    whole = train_diffusion(tiny(steps=6, batch_size=8), data, out_dir=tmp_path / "a", runtime=resolve_runtime("cpu"))
    first = train_diffusion(tiny(steps=3, batch_size=8), data, out_dir=tmp_path / "b", runtime=resolve_runtime("cpu"))
    second = train_diffusion(tiny(steps=6, batch_size=8), data, out_dir=tmp_path / "b", runtime=resolve_runtime("cpu"))
    assert (first.final_step, second.resumed_from, second.final_step) == (3, 3, 6)
    a = torch.load(whole.checkpoint_path, weights_only=True)["ema"]
    b = torch.load(second.checkpoint_path, weights_only=True)["ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="different"):
        train_diffusion(tiny(steps=6, batch_size=8, lr=1e-2), data, out_dir=tmp_path / "b",
                        runtime=resolve_runtime("cpu"))


def test_the_export_is_a_generator_one_seed_one_image(tmp_path):
    """The exported model serves through the GAN's sampling code: a seed gives one image, guidance changes it."""
    cfg = tiny(conditioning="class", num_classes=2, steps=4, batch_size=8, sample_steps=4)
    result = train_diffusion(cfg, two_modes(64), out_dir=tmp_path, runtime=resolve_runtime("cpu"))
    model, cfg = load_diffusion(result.generator_path)
    a = generate(model, cfg, seeds=[0, 1, 2], cond=1)
    again = generate(model, cfg, seeds=[2, 0], cond=1)
    assert a.shape == (3, 8, 8, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[[2, 0]], again)
    assert not np.array_equal(a[0], a[1])
    model.guidance = 3.0
    assert not np.array_equal(generate(model, cfg, seeds=[0], cond=1)[0], a[0])
    assert isinstance(model, DiffusionGenerator)


def _npz(path: Path, *, channels: int, text: bool, seed: int) -> None:
    """A dataset in the script's array format: blobs whose brightness follows the label."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, n in (("train", 96), ("test", 32)):
        y = rng.integers(0, 3, n)
        x = (rng.normal(60 + 60 * y[:, None, None, None], 20, (n, channels, 32, 32))).clip(0, 255)
        arrays[f"{key}_x"], arrays[f"{key}_y"] = x.astype(np.uint8), y.astype(np.int64)
        if text:
            arrays[f"{key}_captions"] = np.array([f"thing {i}" for i in y])
            arrays[f"{key}_text"] = rng.normal(0, 1, (n, 384)).astype(np.float16)
    if text:
        arrays["prompts"], arrays["prompt_text"] = np.array(["a cat with a hat"]), np.ones((1, 384), np.float16)
    np.savez_compressed(path, **arrays)


@pytest.mark.slow
def test_gpu_presets_smoke_trains_samples_and_scores_every_preset(tmp_path):
    """`bench/gpu_presets.py run --smoke`: every preset trains, samples under its protocol and gets an FID with
    the real Inception, so a GPU run is never the script's first run end to end."""
    npz = tmp_path / "npz"
    npz.mkdir()
    _npz(npz / "mnist.npz", channels=1, text=False, seed=0)
    _npz(npz / "fashion-mnist.npz", channels=1, text=False, seed=1)
    _npz(npz / "emoji.npz", channels=3, text=True, seed=2)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_presets.py"), "run", "--smoke", "--npz", str(npz),
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert sorted(results) == sorted(["gpu-mnist", "gpu-mnist-uncond", "gpu-fashion-mnist",
                                      "gpu-fashion-mnist-uncond", "gpu-emoji-text"])
    for preset, row in results.items():
        assert row["steps"] == 3 and row["family"].startswith("diffusion")
        assert all(np.isfinite(s["fid"]) and s["fid"] > 0 for s in row["scores"].values()), preset
    assert set(results["gpu-mnist"]["scores"]) == {"w1.0", "w1.5", "null"}
    assert "heldout_w4.0" in results["gpu-emoji-text"]["scores"]
    assert np.isfinite(results["gpu-mnist"]["real_floor_fid"])
    assert "| gpu-emoji-text |" in (out / "results.md").read_text()
    assert (out / "grids" / "gpu-emoji-text-prompts_w3.0.png").is_file()


def _random_text_model(**kw) -> DiffusionGenerator:
    """A text model with random (not zero-initialised) weights, so every condition moves the output."""
    cfg = tiny(conditioning="text", text_dim=8, channels=3, sample_steps=3, **kw)
    model = DiffusionGenerator(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_a_patched_unet_denoises_whole_images_with_fewer_flops(one_thread):
    """patch=2: the UNet sees 2x2 pixel blocks as channels (a quarter of the positions), images keep their shape."""
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for patch in (1, 2):
        model = _random_text_model(patch=patch)
        z, cond = torch.randn(2, model.cfg.z_dim), torch.randn(2, 8)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            x = model(z, cond)
        assert x.shape == (2, 3, 8, 8) and torch.isfinite(x).all()
        flops[patch] = counter.get_total_flops()
    assert flops[2] < flops[1] / 2, flops
    with pytest.raises(ValueError, match="patch"):
        tiny(patch=3)


def test_and_composes_concepts_as_summed_guided_directions(one_thread):
    """A (N, K, D) text cond is K concepts: D_null + w sum_k (D_k - D_null) (Composable Diffusion); one concept
    is plain classifier-free guidance."""
    from imagegen_pipeline.ml.diffusion.sampler import guided

    model = _random_text_model()
    den = model.denoiser
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor(1.5)
    a, b = torch.randn(2, 8), torch.randn(2, 8)
    with torch.no_grad():
        null = guided(den, x, sigma, None, 1.0)
        da, db = guided(den, x, sigma, a, 1.0), guided(den, x, sigma, b, 1.0)
        both = guided(den, x, sigma, torch.stack([a, b], dim=1), 2.5)
        one = guided(den, x, sigma, a[:, None], 2.5)
    torch.testing.assert_close(both, null + 2.5 * ((da - null) + (db - null)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(one, guided(den, x, sigma, a, 2.5), rtol=1e-4, atol=1e-4)
    # through the generator interface: one (K, D) composite for every seed, deterministic per seed
    composite = np.stack([a[0].numpy(), b[0].numpy()])[None]  # (1, 2, D)
    images = generate(model, model.cfg, seeds=[4, 5], cond=composite)
    np.testing.assert_array_equal(images[1], generate(model, model.cfg, seeds=[5], cond=composite)[0])
    assert not np.array_equal(images[0], generate(model, model.cfg, seeds=[4], cond=a[0].numpy())[0])


def test_alt_captions_stand_in_for_the_name_of_images_that_have_them(one_thread):
    """alt_caption_p: that share of images is conditioned on one of its other captions (drawn uniformly), the
    rest on its name; an image without other captions always speaks by its name. The stage maps the variants
    of captioned train rows onto TrainData rows (an uncaptioned image, left out, takes its variants with it)."""
    from types import SimpleNamespace

    from imagegen_pipeline.ml.diffusion.train import Batches
    from imagegen_pipeline.stages.dcgan import TrainCaptions, _train_data

    eye = np.eye(8, dtype=np.float32)
    images = torch.arange(4, dtype=torch.uint8).mul(60)[:, None, None, None].expand(4, 1, 8, 8).contiguous()
    reader = SimpleNamespace(load_split=lambda split: (images, torch.zeros(4, dtype=torch.int64)))
    captions = TrainCaptions(vectors=eye[:4], found=np.array([True, False, True, True]), stamp="s", examples=[],
                             variant_vectors=eye[4:8], variant_rows=np.array([0, 0, 1, 2]))
    data = _train_data(reader, "text", captions, warn=lambda _: None)
    # rows kept: images 0, 120, 180 (train rows 0, 2, 3); train row 1's variant (caption 6) leaves with it
    assert len(data) == 3 and data.variant_of.tolist() == [0, 0, 1]
    for p, want in ((1.0, {0: [4, 5], 120: [7], 180: [3]}), (0.0, {0: [0], 120: [2], 180: [3]})):
        cfg = tiny(conditioning="text", text_dim=8, alt_caption_p=p, batch_size=512, cond_drop=0.0)
        x, cond, _ = Batches(cfg, data, resolve_runtime("cpu")).next()
        value = ((x[:, 0, 0, 0] + 1) * 127.5).round().int().tolist()  # which image each row is
        drawn = cond.argmax(1).tolist()  # which caption it was conditioned on
        assert {v: sorted({d for v2, d in zip(value, drawn) if v2 == v}) for v in set(value)} == want, p
