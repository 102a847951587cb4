"""The plain-PyTorch DCGAN core on CPU with tiny models: training per conditioning mode, checkpoints and resume
(also after SIGKILL), divergence handling, DDP under torchrun (gloo), sampling, init_from, feature head."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from imagegen_pipeline.ingest.shards import ShardConfig, write_shards
from imagegen_pipeline.ml.checkpoint import CorruptCheckpoint, load_checkpoint
from imagegen_pipeline.ml.dcgan import (DCGANConfig, Discriminator, Generator, TrainData, TrainingDiverged,
                                        generate, interpolate, load_generator, train_dcgan)
from imagegen_pipeline.ml.dcgan.augment import diff_augment
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline_tests.ci_skips import HARDWARE

CPU = resolve_runtime("cpu")
REPO = Path(__file__).resolve().parent.parent
TINY = dict(ngf=8, ndf=8, z_dim=16, batch_size=8, num_samples=4, text_dim=12, text_proj_dim=8, ema_start_step=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**kw) -> DCGANConfig:
    return DCGANConfig(**{**TINY, "steps": 4, "log_every": 2, "sample_every": 2, "checkpoint_every": 2, **kw})


def tiny_data(cfg: DCGANConfig, n: int = 24, seed: int = 0) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    return TrainData(torch.randint(0, 256, (n, cfg.channels, cfg.resolution, cfg.resolution), dtype=torch.uint8,
                                   generator=g),
                     torch.arange(n) % max(cfg.num_classes, 1), torch.randn(n, cfg.text_dim, generator=g))


class StandInFeatures(nn.Module):
    """A tiny frozen 'feature network' with the extractor's contract; optionally returns NaN from call k on."""

    def __init__(self, channels: int, dim: int = 32, nan_from_call: int | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, dim))
        self.calls, self.nan_from_call = 0, nan_from_call

    def embed(self, x01: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        f = self.net(x01)
        return f + float("nan") if self.nan_from_call and self.calls >= self.nan_from_call else f


def write_tiny_shards(root: Path, *, n: int = 48, size: int = 32) -> Path:
    """Real shards through the ingestion writer: PNGs in a landing folder + a manifest -> Parquet + description."""
    landing, rows = root / "landing", []
    rng = np.random.default_rng(0)
    for i in range(n):
        rel = f"{i % 3}/img{i:03d}.png"
        (landing / rel).parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(buf, format="PNG")
        (landing / rel).write_bytes(buf.getvalue())
        rows.append({"path": rel, "sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "label": str(i % 3),
                     "caption": None})
    out = root / "shards"
    write_shards(landing, pd.DataFrame(rows), out, ShardConfig(resolution=size, channels="L", val_fraction=0.0,
                                                               workers=1))
    return out


def cli(shards: Path, out: Path, *args: str) -> list[str]:
    return ["-m", "imagegen_pipeline.ml.dcgan.train_cli", "--shards", str(shards), "--out", str(out),
            "--device", "cpu", "--no-progress", "--ngf", "8", "--ndf", "8", "--z-dim", "16", "--batch-size", "8",
            "--num-samples", "4", *args]


def sub_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("conditioning,channels,resolution", [
    ("none", 1, 32), ("class", 1, 32), ("text", 3, 32), ("class", 3, 64)])
def test_each_conditioning_mode_trains_and_writes_checkpoint_and_export(tmp_path, conditioning, channels, resolution):
    """A few steps in each mode give the right shapes and ranges, a loadable checkpoint and a servable export."""
    cfg = tiny_cfg(conditioning=conditioning, channels=channels, resolution=resolution,
                   num_classes=3 if conditioning == "class" else 0)
    steps, samples = [], []
    result = train_dcgan(cfg, tiny_data(cfg), out_dir=tmp_path, runtime=CPU,
                         on_step=lambda s, m: steps.append((s, m)), on_sample=lambda s, g: samples.append(s))
    assert result.final_step == 4 and [s for s, _ in steps] == [2, 4] and samples == [2, 4]
    assert set(steps[0][1]) == {"loss_d", "loss_g", "d_real", "d_fake", "grad_norm_g", "grad_norm_d",
                                "images_per_second", "z_sensitivity"}  # sample steps also carry z_sensitivity
    assert all(np.isfinite(m["z_sensitivity"]) and m["z_sensitivity"] >= 0 for _, m in steps)
    assert all(np.isfinite(v) for _, m in steps for v in m.values())
    assert result.grid.dtype == np.uint8 and result.grid.ndim == 3 and result.grid.shape[2] == 3
    ckpt = load_checkpoint(result.checkpoint_path)
    assert ckpt["step"] == 4 and DCGANConfig.from_dict(ckpt["config"]) == cfg
    assert {"G", "G_ema", "D", "opt_g", "opt_d", "rng", "metrics"} <= set(ckpt)
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2

    G, loaded_cfg = load_generator(tmp_path)
    assert loaded_cfg == cfg
    cond = {"none": None, "class": torch.tensor([0, 2]), "text": torch.randn(2, cfg.text_dim)}[conditioning]
    with torch.no_grad():
        x = G(torch.randn(2, cfg.z_dim), cond)
        logits, _ = Discriminator(cfg)(x, cond)
    assert x.shape == (2, channels, resolution, resolution) and x.min() >= -1 and x.max() <= 1
    assert logits.shape == (2,)
    images = generate(G, cfg, seeds=[0, 1], cond=cond)
    assert images.shape == (2, resolution, resolution, channels) and images.dtype == np.uint8


def test_cpu_bf16_is_asked_for_and_trains_fp32_weights_in_bf16_autocast(tmp_path):
    """bf16 on CPU only where it is native and only when a stage asks (the extractor and FID stay fp32); the
    weights, checkpoint and export stay fp32, and the result matches an fp32 run's shapes and ranges."""
    from imagegen_pipeline.ml.runtime import cpu_has_native_bf16

    assert resolve_runtime("cpu").amp_dtype is None
    if not cpu_has_native_bf16():
        assert resolve_runtime("cpu", cpu_bf16=True).amp_dtype is None
        pytest.skip(HARDWARE + "this CPU has no native bf16 (AVX512-BF16 / AMX)")
    runtime = resolve_runtime("cpu", cpu_bf16=True)
    assert runtime.amp_dtype == torch.bfloat16
    cfg = tiny_cfg(conditioning="class", num_classes=3, steps=6)
    result = train_dcgan(cfg, tiny_data(cfg), out_dir=tmp_path, runtime=runtime)
    assert all(np.isfinite(v) for m in result.metrics for v in m.values())
    ckpt = load_checkpoint(result.checkpoint_path)
    assert {t.dtype for part in ("G", "G_ema", "D") for t in ckpt[part].values() if t.is_floating_point()} == {
        torch.float32}
    G, _ = load_generator(tmp_path)
    assert {p.dtype for p in G.parameters()} == {torch.float32}
    images = generate(G, cfg, seeds=[0, 1], cond=[0, 0])
    assert images.dtype == np.uint8 and not np.array_equal(images[0], images[1])


def test_generate_is_deterministic_per_seed_and_differs_across_seeds():
    """Serving relies on seed -> image: the same seed gives identical pixels, another seed other pixels."""
    cfg = tiny_cfg(conditioning="class", num_classes=3)
    G = Generator(cfg).eval()
    a, b = generate(G, cfg, seeds=[7, 8], cond=1), generate(G, cfg, seeds=[7], cond=[1])
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], a[1])
    strip = interpolate(G, cfg, seed_a=7, seed_b=8, steps=5, cond=1)
    assert strip.shape == (5, 32, 32, 1)
    assert np.abs(strip[0].astype(int) - a[0]).max() <= 1 and np.abs(strip[-1].astype(int) - a[1]).max() <= 1


def test_diffaugment_keeps_shape_and_passes_gradients():
    """DiffAugment must stay differentiable, or G would get no signal through augmented fakes."""
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    y = diff_augment(x * 2 - 1, "color,translation,cutout")
    y.sum().backward()
    assert y.shape == x.shape and x.grad is not None and x.grad.abs().sum() > 0


def test_config_round_trips_and_rejects_unknown_fields():
    cfg = tiny_cfg(conditioning="text", betas=(0.0, 0.99))
    assert DCGANConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        DCGANConfig.from_dict({"resolutoin": 32})
    with pytest.raises(ValueError, match="resolution"):
        DCGANConfig(resolution=48)


def test_resume_continues_to_the_same_final_step_and_refuses_another_experiment(tmp_path):
    """A second call continues from latest.pt (history kept) instead of starting over; a changed config is refused."""
    cfg = tiny_cfg(steps=4)
    data = tiny_data(cfg)
    train_dcgan(cfg, data, out_dir=tmp_path, runtime=CPU)
    result = train_dcgan(cfg.replace(steps=6), data, out_dir=tmp_path, runtime=CPU)
    assert result.resumed_from == 4 and result.final_step == 6
    assert [m["step"] for m in result.metrics] == [2, 4, 6]
    with pytest.raises(ValueError, match="lr_d"):
        train_dcgan(cfg.replace(lr_d=1e-3), data, out_dir=tmp_path, runtime=CPU)


def test_abort_fn_stops_early_with_a_checkpoint_that_resumes(tmp_path):
    """An abort (e.g. a Dagster run cancel) checkpoints where it stopped; the next call finishes the run."""
    cfg = tiny_cfg(steps=6, checkpoint_every=100)
    seen: list[int] = []
    result = train_dcgan(cfg, tiny_data(cfg), out_dir=tmp_path, runtime=CPU,
                         on_step=lambda s, m: seen.append(s), abort_fn=lambda: len(seen) >= 1)
    assert result.aborted and result.final_step == 2 and load_checkpoint(result.checkpoint_path)["step"] == 2
    assert train_dcgan(cfg, tiny_data(cfg), out_dir=tmp_path, runtime=CPU).final_step == 6


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run_bit_for_bit(tmp_path):
    """Kill -9 the CLI after its first checkpoint; re-running the same command finishes at exactly --steps, with
    the very weights, optimizer state and RNG state of a run that was never killed (CPU, one thread)."""
    shards = write_tiny_shards(tmp_path)
    out, steps = tmp_path / "run", 200
    cmd = [sys.executable, *cli(shards, out, "--steps", str(steps), "--checkpoint-every", "5", "--log-every", "50",
                                "--sample-every", "1000")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=sub_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / "latest.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    killed_at = load_checkpoint(out / "latest.pt")["step"]
    assert 5 <= killed_at < steps

    done = subprocess.run(cmd, cwd=REPO, env=sub_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["final_step"] == steps and summary["resumed_from"] == killed_at
    resumed = load_checkpoint(out / "latest.pt")
    assert resumed["step"] == steps

    straight = tmp_path / "uninterrupted"
    once = subprocess.run([sys.executable, *cli(shards, straight, *cmd[cmd.index("--steps"):])], cwd=REPO,
                          env=sub_env(), capture_output=True, text=True, timeout=120)
    assert once.returncode == 0, once.stderr[-2000:]
    reference = load_checkpoint(straight / "latest.pt")
    for part in ("G", "G_ema", "D"):
        assert all(torch.equal(resumed[part][k], v) for k, v in reference[part].items()), part
    for part in ("opt_g", "opt_d"):
        ours, theirs = resumed[part]["state"], reference[part]["state"]
        assert all(torch.equal(ours[i][k], theirs[i][k]) for i in theirs for k in theirs[i]), part
    assert all(torch.equal(torch.as_tensor(resumed["rng"][k]), torch.as_tensor(v))
               for k, v in reference["rng"].items() if v is not None)


def test_a_truncated_checkpoint_falls_back_to_the_one_before_it_and_never_restarts_at_zero(tmp_path):
    """Issue 14.4: a damaged latest.pt was a bare torch error. Now the generation before it is kept and
    resumed from, and with no readable checkpoint the error names the file and what to do."""
    cfg = tiny_cfg(steps=4)  # checkpoints at steps 2 and 4
    data = tiny_data(cfg)
    train_dcgan(cfg, data, out_dir=tmp_path, runtime=CPU)
    latest, prev = tmp_path / "latest.pt", tmp_path / "latest.prev.pt"
    assert load_checkpoint(prev)["step"] == 2 and load_checkpoint(latest)["step"] == 4
    latest.write_bytes(latest.read_bytes()[:1000])  # a disk that filled mid-write elsewhere, a bad copy
    logs = []
    result = train_dcgan(cfg.replace(steps=6), data, out_dir=tmp_path, runtime=CPU, log=logs.append)
    assert (result.resumed_from, result.final_step) == (2, 6)
    assert any("latest.pt cannot be read" in line and "latest.prev.pt (step 2)" in line for line in logs), logs
    latest.write_bytes(b"not a checkpoint")
    prev.write_bytes(b"")
    with pytest.raises(CorruptCheckpoint, match=r"latest\.pt cannot be read.*no readable earlier checkpoint.*delete"):
        train_dcgan(cfg.replace(steps=8), data, out_dir=tmp_path, runtime=CPU)


def test_nan_loss_raises_training_diverged_naming_the_step_and_keeps_last_checkpoint(tmp_path):
    """A NaN at step 3 (feature network poisoned from its 5th call = step 3's D step) must not be checkpointed."""
    cfg = tiny_cfg(steps=10, checkpoint_every=2, log_every=100, sample_every=100, feature_head=True, feature_dim=32)
    poisoned = StandInFeatures(cfg.channels, nan_from_call=5)
    with pytest.raises(TrainingDiverged, match="step 3"):
        train_dcgan(cfg, tiny_data(cfg), out_dir=tmp_path, runtime=CPU, feature_net=poisoned)
    ckpt = load_checkpoint(tmp_path / "latest.pt")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt["G"].values() if t.is_floating_point())


def test_exploding_loss_raises_before_any_checkpoint(tmp_path):
    cfg = tiny_cfg(explode_threshold=1e-6)
    with pytest.raises(TrainingDiverged, match="step 1"):
        train_dcgan(cfg, tiny_data(cfg), out_dir=tmp_path, runtime=CPU)
    assert not (tmp_path / "latest.pt").exists()


def test_feature_head_trains_with_a_frozen_stand_in_network(tmp_path):
    """The feature head gets gradients; the frozen feature network's weights do not move."""
    cfg = tiny_cfg(feature_head=True, feature_dim=32, channels=3)
    net = StandInFeatures(3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = train_dcgan(cfg, tiny_data(cfg), out_dir=tmp_path, runtime=CPU, feature_net=net)
    assert result.final_step == 4 and net.calls == 2 * 4
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert any(k.startswith("feature_head.") for k in load_checkpoint(result.checkpoint_path)["D"])


def test_init_from_starts_from_another_runs_weights_and_can_freeze_d_blocks(tmp_path):
    """Fine-tuning starts from the other run's G and D; FreezeD keeps D's first block exactly as loaded."""
    cfg = tiny_cfg(steps=2)
    data = tiny_data(cfg)
    first = load_checkpoint(train_dcgan(cfg, data, out_dir=tmp_path / "a", runtime=CPU).checkpoint_path)
    start = train_dcgan(cfg.replace(steps=0, seed=5), data, out_dir=tmp_path / "b", runtime=CPU, init_from=first)
    assert all(torch.equal(v, first["G"][k]) for k, v in load_checkpoint(start.checkpoint_path)["G"].items())

    tuned = train_dcgan(cfg.replace(freeze_d_blocks=1), data, out_dir=tmp_path / "c", runtime=CPU, init_from=first)
    d = load_checkpoint(tuned.checkpoint_path)["D"]
    frozen = [k for k in d if k.startswith("blocks.0.") and k.endswith("original")]
    moved = [k for k in d if k.startswith("blocks.1.") and k.endswith("original")]
    assert frozen and all(torch.equal(d[k], first["D"][k]) for k in frozen)
    assert moved and not all(torch.equal(d[k], first["D"][k]) for k in moved)

    rgb = cfg.replace(channels=3, conditioning="class", num_classes=3, steps=1)  # new heads start fresh
    assert train_dcgan(rgb, tiny_data(rgb), out_dir=tmp_path / "d", runtime=CPU, init_from=first).final_step == 1
    big = cfg.replace(resolution=64)
    with pytest.raises(ValueError, match="init_from"):
        train_dcgan(big, tiny_data(big), out_dir=tmp_path / "e", runtime=CPU, init_from=first)


@pytest.mark.slow
def test_ddp_nan_on_one_rank_stops_every_rank_instead_of_hanging(tmp_path):
    """Issue 13.10: rank 1 alone saw the NaN and raised; rank 0 then waited in the next all-reduce for the
    30-minute process-group timeout. The ranks now agree on divergence at every check."""
    shards = write_tiny_shards(tmp_path)
    config = tmp_path / "fault.json"
    config.write_text(json.dumps({"extra": {"fault_nan_at": [1, 3]}}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           *cli(shards, tmp_path / "run", "--steps", "40", "--checkpoint-every", "100", "--log-every", "2",
                "--config", str(config))]
    try:
        done = subprocess.run(cmd, cwd=REPO, env=sub_env(), capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("a NaN on rank 1 left the other rank hanging")
    assert done.returncode != 0
    assert done.stderr.count("training diverged at step 3") >= 2, done.stderr[-3000:]  # both ranks say so


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_finishes_and_writes_one_checkpoint(tmp_path):
    """torchrun with 2 CPU ranks: DDP over gloo trains to the end and only rank 0 writes."""
    shards = write_tiny_shards(tmp_path)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           *cli(shards, out, "--steps", "4", "--checkpoint-every", "100", "--log-every", "2")]
    done = subprocess.run(cmd, cwd=REPO, env=sub_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["world_size"] == 2 and summaries[0]["final_step"] == 4
    assert summaries[0]["ranks_agree"] is True  # both ranks hold the same G and D at the end
    ckpt = load_checkpoint(out / "latest.pt")
    assert ckpt["step"] == 4 and ckpt["world_size"] == 2
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["latest.pt"]
