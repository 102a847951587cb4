"""The diffusion training loop: uint8 data resident on the device, one denoiser forward per step, EMA weights.

Same contract as `train_dcgan`: callbacks for logging (`on_step`, `on_sample`, `abort_fn`, `log`), a resumable
out_dir/latest.pt written atomically, and the EMA model exported as out_dir/generator.safetensors. No host
sync happens in a step except on log steps; `cfg.max_seconds` stops a call at a wall-clock budget (the run
resumes from there to `cfg.steps`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from imagegen_pipeline.ml.checkpoint import save_checkpoint
from imagegen_pipeline.ml.dcgan import ddp
from imagegen_pipeline.ml.dcgan.train import (CHECKPOINT_FILE, MetricLog, TrainData, TrainingDiverged, TrainResult,
                                              fixed_inputs, restore_rng, resume_state, rng_state, sync_device)
from imagegen_pipeline.ml.dcgan.sample import render
from imagegen_pipeline.ml.diffusion.config import RESUMABLE_CHANGES, DiffusionConfig
from imagegen_pipeline.ml.diffusion.export import WEIGHTS_FILE, export_diffusion
from imagegen_pipeline.ml.diffusion.sampler import DiffusionGenerator
from imagegen_pipeline.ml.diffusion.unet import Denoiser, edm_loss
from imagegen_pipeline.ml.grids import image_grid
from imagegen_pipeline.ml.runtime import Runtime, resolve_runtime, seed_everything



def ema_beta(cfg: DiffusionConfig, images_seen: int) -> float:
    """Per-step EMA decay for EDM's half-life in images, ramped up early (the average forgets the noisy start)."""
    halflife = cfg.ema_halflife_kimg * 1000
    if cfg.ema_rampup > 0:
        halflife = min(halflife, images_seen * cfg.ema_rampup)
    return 0.5 ** (cfg.batch_size / max(halflife, 1e-8))


def check_data(cfg: DiffusionConfig, data: TrainData) -> None:
    want = (cfg.channels, cfg.resolution, cfg.resolution)
    if tuple(data.images.shape[1:]) != want:
        raise ValueError(f"config wants images {want}, data has {tuple(data.images.shape[1:])}")
    if cfg.conditioning == "class" and (data.labels is None or int(data.labels.min()) < 0
                                        or int(data.labels.max()) >= cfg.num_classes):
        raise ValueError(f"class conditioning needs labels in [0, {cfg.num_classes}) for every image")
    if cfg.conditioning == "text" and (data.text is None or tuple(data.text.shape[1:]) != cfg.text_shape):
        raise ValueError(f"text conditioning needs data.text of shape (N, {', '.join(map(str, cfg.text_shape))})")


class Batches:
    """Random batches drawn on the device from the resident uint8 images: x in [-1, 1], cond, keep mask."""

    def __init__(self, cfg: DiffusionConfig, data: TrainData, runtime: Runtime):
        self.cfg, self.runtime = cfg, runtime
        dev = runtime.device
        self.images = data.images.to(dev)
        # text stays in its stored dtype (token states travel as float16: 16x the pooled vectors' size) and
        # becomes float32 per batch
        self.cond = data.labels.to(dev) if cfg.conditioning == "class" else \
            data.text.to(dev) if cfg.conditioning == "text" else None
        self.variants = None
        if cfg.conditioning == "text" and cfg.alt_caption_p > 0 and data.text_variants is not None \
                and len(data.variant_of):
            order = torch.argsort(data.variant_of, stable=True)  # each image's variants contiguous
            count = torch.bincount(data.variant_of, minlength=len(data.images))
            start = torch.cumsum(count, 0) - count
            self.variants = (data.text_variants[order].to(dev), start.to(dev), count.to(dev))

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        cfg, dev = self.cfg, self.runtime.device
        idx = torch.randint(len(self.images), (cfg.batch_size,), device=dev)
        x = self.images[idx].float().div_(127.5).sub_(1.0)  # (B, C, R, R)
        if self.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.cond is None:
            return x, None, None
        keep = (torch.rand(cfg.batch_size, device=dev) >= cfg.cond_drop).float()
        cond = self.cond[idx]
        cond = cond.float() if cond.is_floating_point() else cond
        if self.variants is not None:  # some images speak under another of their captions this step
            vectors, start, count = self.variants
            pick = (torch.rand(cfg.batch_size, device=dev) < cfg.alt_caption_p) & (count[idx] > 0)
            j = start[idx] + (torch.rand(cfg.batch_size, device=dev) * count[idx]).long().clamp(
                max=(count[idx] - 1).clamp(min=0))
            pick = pick.reshape(-1, *[1] * (cond.ndim - 1))
            cond = torch.where(pick, vectors[j.clamp(max=len(vectors) - 1)].float(), cond)
        return x, cond, keep


def _forward_backward(model, x, cond, keep, cfg: DiffusionConfig, runtime: Runtime, opt) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    with runtime.autocast():
        loss = edm_loss(model, x, cond, keep, cfg)
    loss.backward()
    return loss


def train_diffusion(cfg: DiffusionConfig, data: TrainData, *, out_dir: str | os.PathLike,
                    runtime: Runtime | None = None, on_step: Callable[[int, dict], None] | None = None,
                    on_sample: Callable[[int, np.ndarray], None] | None = None,
                    abort_fn: Callable[[], bool] | None = None,
                    log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) the denoiser on `data` until `cfg.steps` (or `cfg.max_seconds`); export the EMA net."""
    runtime, log = runtime or resolve_runtime(), log or (lambda _: None)
    out_dir = Path(out_dir)
    check_data(cfg, data)
    gen = seed_everything(cfg.seed)
    net = Denoiser(cfg)
    ema = Denoiser(cfg).requires_grad_(False)
    state = resume_state(out_dir / CHECKPOINT_FILE, cfg, log, resumable=RESUMABLE_CHANGES)
    net, ema = runtime.to_device(net), runtime.to_device(ema)
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8, fused=runtime.is_cuda)
    step, history = 0, []
    if state is not None:
        step, history = int(state["step"]), list(state["metrics"])
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        restore_rng(state, cfg, ddp.current(), runtime, gen)
        log(f"resuming from {out_dir / CHECKPOINT_FILE} at step {step}/{cfg.steps}")
    ema.eval()
    train_net = torch.compile(net) if cfg.compile and runtime.is_cuda else net
    batches = Batches(cfg, data, runtime)
    fixed_z, fixed_cond, grid_cols = fixed_inputs(cfg, data)
    net_p, ema_p = list(net.parameters()), list(ema.parameters())
    loss_sum, count = torch.zeros((), device=runtime.device), 0
    metric_log = MetricLog(history, step, cfg.batch_size, on_step)

    def checkpoint() -> None:
        save_checkpoint(out_dir / CHECKPOINT_FILE, {
            "net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
            "config": cfg.to_dict(), "rng": rng_state(runtime, gen), "metrics": history, "world_size": 1})

    def sample() -> np.ndarray:
        g = DiffusionGenerator(cfg).to(runtime.device)
        g.denoiser.load_state_dict(ema.state_dict())
        picture = image_grid(render(g, fixed_z, fixed_cond, runtime=runtime, chunk=len(fixed_z)), nrow=grid_cols)
        (out_dir / "samples").mkdir(parents=True, exist_ok=True)
        picture.save(out_dir / "samples" / f"step_{step:07d}.png")
        if on_sample:
            on_sample(step, np.asarray(picture))
        return np.asarray(picture)

    start_step, grid, sampled_at, aborted, compiled_ok = step, None, None, False, False
    t_start, t_first = time.perf_counter(), None
    net.train()
    while step < cfg.steps:
        if (abort_fn is not None and abort_fn()) or \
                (cfg.max_seconds > 0 and time.perf_counter() - t_start > cfg.max_seconds):
            aborted = abort_fn is not None and abort_fn()
            log(f"stopped at step {step}" + (" (aborted)" if aborted else f" (budget {cfg.max_seconds:.0f} s)"))
            break
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.lr_warmup, 1))
        x, cond, keep = batches.next()
        try:
            loss = _forward_backward(train_net, x, cond, keep, cfg, runtime, opt)
        except Exception as exc:  # noqa: BLE001 - only a first compiled step falls back; anything else raises
            if train_net is net or compiled_ok:
                raise
            log(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:300]}); training eagerly")
            train_net = net
            loss = _forward_backward(net, x, cond, keep, cfg, runtime, opt)
        compiled_ok = True
        opt.step()
        step += 1
        with torch.no_grad():
            torch._foreach_lerp_(ema_p, net_p, 1.0 - ema_beta(cfg, step * cfg.batch_size))
            loss_sum += loss.detach()
        count += 1
        if t_first is None:
            sync_device(runtime)
            t_first = time.perf_counter()
        if step % cfg.log_every == 0 or step == cfg.steps:
            value = float(loss_sum) / count
            if not np.isfinite(value):
                raise TrainingDiverged(f"diffusion loss is not finite at step {step}; the last checkpoint is kept")
            metric_log.add(step, {"loss": value})
            loss_sum.zero_()
            count = 0
        if step % cfg.sample_every == 0:
            grid, sampled_at = sample(), step
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            checkpoint()
    sync_device(runtime)
    elapsed = time.perf_counter() - (t_first or time.perf_counter())
    trained = step - start_step - 1
    checkpoint()
    if sampled_at != step:
        grid = sample()
    metric_log.close(step)
    export_diffusion(ema, cfg, out_dir, step=step)
    ips = trained * cfg.batch_size / elapsed if trained > 0 and elapsed > 0 else 0.0
    return TrainResult(out_dir / CHECKPOINT_FILE, out_dir / WEIGHTS_FILE, step, history, ips, grid, start_step,
                       aborted)
