"""The DCGAN training loop: uint8 data resident on the device, one G forward and one D forward per step.

The caller owns logging and tracking through callbacks (`on_step`, `on_sample`, `abort_fn`, `log`); this file
never imports Dagster or MLflow. A run is resumable: out_dir/latest.pt is rewritten atomically every
`checkpoint_every` steps, and calling `train_dcgan` again with the same config continues to `cfg.steps`.
Under torchrun the same function runs on every rank (see ddp.py); only rank 0 writes files.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from imagegen_pipeline.ml.checkpoint import CorruptCheckpoint, load_checkpoint, previous_path, save_checkpoint
from imagegen_pipeline.ml.dcgan import ddp
from imagegen_pipeline.ml.dcgan.augment import diff_augment
from imagegen_pipeline.ml.dcgan.config import ARCHITECTURE, RESUMABLE_CHANGES, DCGANConfig
from imagegen_pipeline.ml.dcgan.ema import EMA
from imagegen_pipeline.ml.dcgan.export import WEIGHTS_FILE, export_generator
from imagegen_pipeline.ml.dcgan.losses import d_loss, g_loss
from imagegen_pipeline.ml.dcgan.monitor import ZSensitivity
from imagegen_pipeline.ml.dcgan.models import Discriminator, Generator
from imagegen_pipeline.ml.dcgan.sample import render
from imagegen_pipeline.ml.grids import image_grid
from imagegen_pipeline.ml.runtime import Runtime, resolve_runtime, seed_everything

CHECKPOINT_FILE = "latest.pt"
FIXED_NOISE_SEED = 1234  # one constant for every run, so sample grids of different runs compare by eye
METRIC_NAMES = ("loss_d", "loss_g", "d_real", "d_fake")
COLLAPSE_WARNING = 0.2  # z_sensitivity below this (share of real) is logged as a likely collapse
NORM_BATCHES = 16  # batches of cfg.batch_size that estimate the EMA generator's BatchNorm statistics


class TrainingDiverged(RuntimeError):
    """A loss went NaN/inf or past `explode_threshold`; the last good checkpoint is left as it was."""


@dataclass
class TrainData:
    """A whole training split in memory; batches are drawn by random index, never decoded per step."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor | None = None  # int64 (N,); -1 = unlabelled
    text: torch.Tensor | None = None  # float (N, text_dim): one caption embedding per image
    # an image's other captions (short names, tags), for models that draw one per step (diffusion's alt_caption_p)
    text_variants: torch.Tensor | None = None  # float (M, text_dim)
    variant_of: torch.Tensor | None = None  # int64 (M,): the image row each variant describes

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        n = len(self.images)
        if n == 0:
            raise ValueError("no training images")
        for name, t in (("labels", self.labels), ("text", self.text)):
            if t is not None and len(t) != n:
                raise ValueError(f"{name} has {len(t)} rows for {n} images")
        if (self.text_variants is None) != (self.variant_of is None) or (
                self.variant_of is not None and (len(self.variant_of) != len(self.text_variants) or (
                    len(self.variant_of) and not 0 <= int(self.variant_of.min()) <= int(self.variant_of.max()) < n))):
            raise ValueError("text_variants and variant_of go together: one image row in [0, N) per variant")

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class TrainResult:
    checkpoint_path: Path  # out_dir/latest.pt: full training state at final_step
    generator_path: Path  # out_dir/generator.safetensors: the EMA generator for serving (config beside it)
    final_step: int  # == cfg.steps unless abort_fn stopped the run
    metrics: list[dict] = field(default_factory=list)  # every log_every steps, with "step", since step 0
    images_per_second: float = 0.0  # this call's training throughput, all ranks, first (warm-up) step excluded
    grid: np.ndarray | None = None  # final fixed-noise grid, uint8 (H, W, 3); None on ranks other than 0
    resumed_from: int = 0  # step the call started at (0 = fresh run)
    aborted: bool = False
    ranks_agree: bool = True  # under DDP: every rank ended with the same G and D parameters


def train_dcgan(cfg: DCGANConfig, data: TrainData, *, out_dir: str | os.PathLike, runtime: Runtime | None = None,
                feature_net: nn.Module | None = None, init_from: dict | None = None,
                on_step: Callable[[int, dict], None] | None = None,
                on_sample: Callable[[int, np.ndarray], None] | None = None,
                abort_fn: Callable[[], bool] | None = None,
                log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) a DCGAN on `data` until `cfg.steps`; see the module docstring.

    feature_net: frozen network with `embed(x01 (N, C, H, W) in [0, 1]) -> (N, cfg.feature_dim)` for the
    feature head (it is put in eval mode with requires_grad off). init_from: another run's checkpoint dict;
    fresh runs start G and D from its tensors of matching name and shape (ignored when resuming).
    """
    runtime = runtime or resolve_runtime()
    info = ddp.current()
    log = (log or (lambda _: None)) if info.is_main else (lambda _: None)
    out_dir = Path(out_dir)
    check_inputs(cfg, data, feature_net)
    data_gen = seed_everything(cfg.seed, rank=info.rank)
    G, D = Generator(cfg), Discriminator(cfg)
    state = resume_state(out_dir / CHECKPOINT_FILE, cfg, log)
    if state is None and init_from is not None:
        _init_from(G, D, init_from, log)
    if cfg.freeze_d_blocks:
        D.freeze_blocks(cfg.freeze_d_blocks)
    G, D = runtime.to_device(G), runtime.to_device(D)
    _first_layer_contiguous(G)
    ema = EMA(G, beta=cfg.ema_beta, start_step=cfg.ema_start_step) if info.is_main else None
    d_params = [p for p in D.parameters() if p.requires_grad]
    fused = runtime.is_cuda  # one kernel per parameter group instead of several per tensor chunk
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas, fused=fused)
    opt_d = torch.optim.Adam(d_params, lr=cfg.lr_d, betas=cfg.betas, fused=fused)
    step, history = 0, []
    if state is not None:
        step, history = int(state["step"]), list(state["metrics"])
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        if ema is not None:
            ema.load_state_dict(state["G_ema"])
        data_gen = restore_rng(state, cfg, info, runtime, data_gen)
        log(f"resuming from {out_dir / CHECKPOINT_FILE} at step {step}/{cfg.steps}")
    if feature_net is not None:
        feature_net = feature_net.to(runtime.device).eval().requires_grad_(False)
    G_train, D_train = ddp.wrap(G, info, runtime), ddp.wrap(D, info, runtime)
    if cfg.compile and runtime.is_cuda:
        G_train, D_train = torch.compile(G_train), torch.compile(D_train)
    elif cfg.compile:
        log("compile=True is ignored on CPU")
    D_plain = (torch.compile(D) if cfg.compile and runtime.is_cuda else D) if info.enabled else D_train
    batches = Batches(cfg, data, runtime, data_gen)
    fixed_z, fixed_cond, grid_cols = fixed_inputs(cfg, data)
    z_sensitivity = ZSensitivity(cfg, data.images, data.labels, data.text) if info.is_main else None
    loop = _Loop(cfg, runtime, G_train, D_train, D_plain, d_params, opt_g, opt_d, feature_net, info)

    def recalibrate_ema() -> None:
        """Fresh BatchNorm statistics for the averaged weights, from draws that leave the training RNG alone."""
        ema.recalibrate(batches.norm_inputs(step, cfg.batch_size), batches=NORM_BATCHES)

    def checkpoint() -> None:
        loop.raise_if_diverged()
        if info.is_main:
            recalibrate_ema()
            save_checkpoint(out_dir / CHECKPOINT_FILE, {
                "G": ddp.unwrap(G).state_dict(), "G_ema": ema.state_dict(), "D": ddp.unwrap(D).state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step, "config": cfg.to_dict(),
                "rng": rng_state(runtime, batches.gen), "metrics": history, "world_size": info.world_size})

    def sample() -> np.ndarray | None:
        loop.raise_if_diverged()
        if not info.is_main:
            return None
        recalibrate_ema()
        images = render(ema.model, fixed_z, fixed_cond, runtime=runtime)
        picture = image_grid(images, nrow=grid_cols)
        (out_dir / "samples").mkdir(parents=True, exist_ok=True)
        picture.save(out_dir / "samples" / f"step_{step:07d}.png")
        grid = np.asarray(picture)
        if on_sample:
            on_sample(step, grid)
        z_sens = metric_log.pending["z_sensitivity"] = z_sensitivity(ema.model, runtime)  # out with the next row
        if z_sens < COLLAPSE_WARNING and step >= cfg.steps // 4:  # early G is blurry anyway
            log(f"step {step}: z_sensitivity {z_sens:.2f} of real: images barely change with z "
                "(mode collapse?)")
        return grid

    start_step, aborted, grid, sampled_at = step, False, None, None
    per_step = cfg.batch_size * info.world_size
    metric_log = MetricLog(history, step, per_step, on_step)
    t_first = None
    while step < cfg.steps:
        if abort_fn is not None and abort_fn():
            aborted = True
            log(f"aborted at step {step}")
            break
        is_log = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
        loop.train_step(batches.next(), step + 1, measure=is_log)
        step += 1
        if ema is not None:
            ema.update(ddp.unwrap(G), step)
        if t_first is None:
            sync_device(runtime)
            t_first = time.perf_counter()
        if step % cfg.sample_every == 0:
            grid, sampled_at = sample(), step
        if is_log:
            metric_log.add(step, loop.collect())  # collect() syncs the device, raises TrainingDiverged
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            checkpoint()
    sync_device(runtime)
    elapsed = time.perf_counter() - (t_first or time.perf_counter())
    trained = step - start_step - 1
    ips = trained * per_step / elapsed if trained > 0 and elapsed > 0 else 0.0
    checkpoint()
    if sampled_at != step:  # the same decision on every rank: sample() takes part in the divergence all-reduce
        grid = sample()
    metric_log.close(step)
    if info.is_main:
        recalibrate_ema()
        export_generator(ema.model, cfg, out_dir, step=step)
    agree = ddp.params_agree(G, info) and ddp.params_agree(D, info)
    return TrainResult(out_dir / CHECKPOINT_FILE, out_dir / WEIGHTS_FILE, step, history, ips, grid,
                       start_step, aborted, agree)


class MetricLog:
    """The metrics history of a run (kept in its checkpoint): every log_every steps one row with the throughput
    since the last row, and the figures measured at the last sample grid (`pending`), also sent to `on_step`."""

    def __init__(self, history: list[dict], step: int, per_step: int,
                 on_step: Callable[[int, dict], None] | None = None):
        self.history, self.per_step, self.on_step = history, per_step, on_step
        self.pending: dict = {}
        self.t_window, self.window_start = time.perf_counter(), step

    def add(self, step: int, metrics: dict) -> None:
        now = time.perf_counter()
        metrics["images_per_second"] = (step - self.window_start) * self.per_step / max(now - self.t_window, 1e-9)
        self.t_window, self.window_start = now, step
        metrics.update(self.pending)
        self.pending.clear()
        self.history.append({"step": step, **metrics})
        if self.on_step:
            self.on_step(step, metrics)

    def close(self, step: int) -> None:
        """The final grid's figures join the last row (or make one)."""
        if self.pending and self.history and self.history[-1]["step"] == step:
            self.history[-1].update(self.pending)
        elif self.pending:
            self.history.append({"step": step, **self.pending})
        self.pending.clear()


class _Loop:
    """One optimisation step of D then G, with metrics and the divergence check kept on the device (no sync)."""

    def __init__(self, cfg, runtime, G, D, D_plain, d_params, opt_g, opt_d, feature_net, info):
        self.cfg, self.runtime, self.G, self.D, self.D_plain = cfg, runtime, G, D, D_plain
        self.d_params, self.opt_g, self.opt_d, self.feature_net = d_params, opt_g, opt_d, feature_net
        self.info = info
        # fault injection for the DDP divergence test: (rank, step) whose D loss becomes NaN
        self.nan_at = tuple(cfg.extra.get("fault_nan_at", ())) or None
        self.policy = cfg.augment_policy
        self.sums = torch.zeros(len(METRIC_NAMES), device=runtime.device)
        self.count = 0
        self.grad_norms = torch.zeros(2, device=runtime.device)
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=runtime.device)

    def _features(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.feature_net is None else self.feature_net.embed((x + 1) * 0.5)

    def train_step(self, batch: dict, step: int, *, measure: bool) -> None:
        cfg, x, c = self.cfg, batch["x"], batch["cond"]
        n = len(x)
        g_cond = c if batch["cond_int"] is None else torch.cat([c, batch["cond_int"]])
        z = torch.randn(len(g_cond) if g_cond is not None else n, cfg.z_dim, device=x.device)
        with self.runtime.autocast():
            fake_all = self.G(z, g_cond)  # (N [+ N_int], C, H, W)
        fake = fake_all[:n]

        # D step: real, fake (and real with a wrong caption) in one batch, all augmented alike.
        parts = [x, fake.detach().to(x.dtype)] + ([x] if batch["cond_wrong"] is not None else [])
        d_x = diff_augment(torch.cat(parts), self.policy)
        d_c = None if c is None else torch.cat([c, c] + ([batch["cond_wrong"]] if batch["cond_wrong"] is not None
                                                          else []))
        with self.runtime.autocast():
            with torch.no_grad():
                feats = self._features(d_x)
            logits, head = self.D(d_x, d_c, feats)
        real, rest = logits[:n], logits[n:]
        loss_d = d_loss(real, rest, cfg.loss)
        if head is not None:
            loss_d = loss_d + d_loss(head[:n], head[n:2 * n], cfg.loss)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        if measure:
            self.grad_norms[1] = _grad_norm(self.d_params)
        self.opt_d.step()

        # G step through the plain D (no DDP sync for D, no D weight grads) in eval mode: D has no BatchNorm,
        # so eval only skips a second spectral-norm power iteration; sigma comes from the D step's estimate.
        for p in self.d_params:
            p.requires_grad_(False)
        g_x = diff_augment(fake_all, self.policy)
        self.D_plain.eval()
        with self.runtime.autocast():
            logits_g, head_g = self.D_plain(g_x, g_cond, self._features(g_x))
        self.D_plain.train()
        loss_g = g_loss(logits_g[:n], cfg.loss)
        if batch["cond_int"] is not None:  # GAN-INT: mixed captions have no real image, only D's judgement
            loss_g = loss_g + g_loss(logits_g[n:], cfg.loss)
        if head_g is not None:
            loss_g = loss_g + g_loss(head_g, cfg.loss)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        for p in self.d_params:
            p.requires_grad_(True)
        if measure:
            self.grad_norms[0] = _grad_norm(self.G.parameters())
        self.opt_g.step()

        with torch.no_grad():
            losses = torch.stack([loss_d.detach(), loss_g.detach()])
            if self.nan_at == (self.info.rank, step):
                losses[0] = float("nan")
            self.sums += torch.stack([*losses, torch.sigmoid(real.float()).mean(),
                                      torch.sigmoid(logits[n:2 * n].float()).mean()])
            self.count += 1
            if self.cfg.nan_guard:
                bad = ~torch.isfinite(losses).all()
                if self.cfg.explode_threshold > 0:
                    bad = bad | (losses.abs() > self.cfg.explode_threshold).any()
                self.bad_step = torch.where((self.bad_step < 0) & bad, step, self.bad_step)

    def raise_if_diverged(self) -> None:
        """Called by every rank at the same steps: a divergence on any rank stops all of them together (alone,
        the healthy ranks would wait in the next gradient all-reduce until the process-group timeout)."""
        bad = int(ddp.all_reduce_max(self.bad_step, self.info))
        if bad >= 0:
            raise TrainingDiverged(f"training diverged at step {bad}: loss was NaN/inf or above "
                                   f"explode_threshold={self.cfg.explode_threshold}; the last checkpoint is kept")

    def collect(self) -> dict:
        """Window means of the losses and D scores (d_real/d_fake are mean sigmoid(D)), last step's grad norms."""
        self.raise_if_diverged()
        means = (ddp.all_reduce_mean(self.sums, self.info) / max(self.count, 1)).tolist()  # every rank's batches
        g, d = ddp.all_reduce_mean(self.grad_norms, self.info).tolist()
        self.sums.zero_()
        self.count = 0
        return {**dict(zip(METRIC_NAMES, means, strict=True)), "grad_norm_g": g, "grad_norm_d": d}


class Batches:
    """Random-index batches from the uint8 tensor, mapped to [-1, 1] on the device."""

    def __init__(self, cfg: DCGANConfig, data: TrainData, runtime: Runtime, gen: torch.Generator):
        self.cfg, self.runtime, self.gen = cfg, runtime, gen
        self.images = _place(data.images, runtime)
        dev = runtime.device
        self.labels = data.labels.to(dev) if cfg.conditioning == "class" else None
        self.text = data.text.to(dev, torch.float32) if cfg.conditioning == "text" else None

    def next(self) -> dict:
        cfg, n, b = self.cfg, len(self.images), self.cfg.batch_size
        idx = torch.randint(n, (b,), generator=self.gen)
        idx = idx.to(self.runtime.device, non_blocking=True)
        x = self.images[idx.to(self.images.device)].to(self.runtime.device, non_blocking=True)
        x = x.float().div_(127.5).sub_(1.0)  # (B, C, H, W) in [-1, 1]
        if self.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = {"x": x, "cond": None, "cond_wrong": None, "cond_int": None}
        if self.labels is not None:
            out["cond"] = self.labels[idx]
        elif self.text is not None:
            t = self.text[idx]
            shift = int(torch.randint(1, max(2, b), (1,), generator=self.gen))
            other = t.roll(shift, 0)  # another image's caption
            out["cond"] = t
            out["cond_wrong"] = other if cfg.matching_aware else None
            out["cond_int"] = 0.5 * (t + other)[: max(1, b // 2)] if cfg.text_interpolation else None
        return out


    def norm_inputs(self, step: int, n: int) -> Callable[[], tuple]:
        """(z, cond) draws for G shaped like training's, from their own generator seeded by (seed, step): the
        same checkpoint gets the same statistics, and the training stream is not advanced."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step + 17)
        rows = self.labels if self.labels is not None else self.text

        def draw() -> tuple:
            z = torch.randn(n, self.cfg.z_dim, generator=gen).to(self.runtime.device)
            if rows is None:
                return (z, None)
            return (z, rows[torch.randint(len(rows), (n,), generator=gen).to(rows.device)])
        return draw


def check_inputs(cfg: DCGANConfig, data: TrainData, feature_net: nn.Module | None) -> None:
    want = (cfg.channels, cfg.resolution, cfg.resolution)
    if tuple(data.images.shape[1:]) != want:
        raise ValueError(f"config wants images {want}, data has {tuple(data.images.shape[1:])}")
    if cfg.conditioning == "class":
        if data.labels is None or int(data.labels.min()) < 0 or int(data.labels.max()) >= cfg.num_classes:
            raise ValueError(f"class conditioning needs labels in [0, {cfg.num_classes}) for every image")
    if cfg.conditioning == "text" and (data.text is None or data.text.shape[1:] != (cfg.text_dim,)):
        raise ValueError(f"text conditioning needs data.text of shape (N, {cfg.text_dim})")
    if cfg.feature_head != (feature_net is not None):
        raise ValueError("pass feature_net exactly when cfg.feature_head is on")


def resume_state(path: Path, cfg, log: Callable[[str], None], *,
                 resumable: frozenset[str] = RESUMABLE_CHANGES) -> dict | None:
    """The checkpoint to continue from, or None; a checkpoint of a different experiment (a field outside
    `resumable` changed) is an error. A damaged checkpoint falls back to the generation before it; with none, the
    run stops instead of restarting at 0. Every family's loop resumes through this."""
    prev = previous_path(path)
    if not path.is_file() and not prev.is_file():
        return None
    try:
        state = load_checkpoint(path)
    except (CorruptCheckpoint, FileNotFoundError) as exc:
        try:
            state = load_checkpoint(prev)
        except (CorruptCheckpoint, FileNotFoundError):
            raise CorruptCheckpoint(f"{exc}; no readable earlier checkpoint ({prev.name}) to fall back to. Restore "
                                    f"it, or delete {path.parent} to train from step 0") from None
        log(f"{exc}; resuming from the checkpoint before it, {prev.name} (step {int(state['step'])})")
    old, new = state["config"], cfg.to_dict()
    changed = sorted(k for k in new if k not in resumable and old.get(k) != new[k])
    if changed:
        raise ValueError(f"{path} belongs to a run with different {changed}; "
                         "use another out_dir or delete it to start over")
    return state


def _init_from(G: nn.Module, D: nn.Module, ckpt: dict, log: Callable[[str], None]) -> None:
    """Start from another run's weights: every tensor whose name and shape match. New heads (another
    conditioning, another channel count) start fresh; a checkpoint sharing under half the tensors is refused."""
    for name, module in (("G", G), ("D", D)):
        own = module.state_dict()
        match = {k: v for k, v in ckpt[name].items() if k in own and own[k].shape == v.shape}
        if len(match) < len(own) / 2:
            other = {k: ckpt["config"].get(k) for k in ARCHITECTURE}
            raise ValueError(f"init_from: only {len(match)}/{len(own)} {name} tensors fit; the checkpoint's "
                             f"architecture {other} is too far from this one's")
        module.load_state_dict(match, strict=False)
        fresh = sorted(set(own) - set(match))
        log(f"init_from: {name} starts from {len(match)}/{len(own)} tensors" + (f"; fresh: {fresh}" if fresh else ""))


def rng_state(runtime: Runtime, gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if runtime.is_cuda:
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def restore_rng(state: dict, cfg: DCGANConfig, info: ddp.DistInfo, runtime: Runtime,
                 gen: torch.Generator) -> torch.Generator:
    """Continue the exact random stream when one process wrote and one resumes; otherwise (only rank 0's state
    is saved) reseed every rank from (seed, step) so ranks still draw different batches."""
    rng = state["rng"]
    if info.world_size == 1 and state.get("world_size", 1) == 1:
        torch.set_rng_state(rng["torch"])
        gen.set_state(rng["data"])
        if runtime.is_cuda and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], runtime.device)
        return gen
    return seed_everything(cfg.seed * 1_000_003 + int(state["step"]), rank=info.rank)


def fixed_inputs(cfg: DCGANConfig, data: TrainData) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Fixed noise (and conditions cycling over classes / the first captions): one column per condition."""
    n, cols, cond = cfg.num_samples, max(1, int(np.ceil(np.sqrt(cfg.num_samples)))), None
    if cfg.conditioning == "class" and cfg.num_classes <= 16:
        cols = cfg.num_classes
        n = -(-n // cols) * cols
    if cfg.conditioning == "class":
        cond = torch.arange(n) % cfg.num_classes
    elif cfg.conditioning == "text":
        cols = min(cols, len(data))
        cond = data.text[torch.arange(n) % cols].float()
    z = torch.randn(n, cfg.z_dim, generator=torch.Generator().manual_seed(FIXED_NOISE_SEED))
    return z, cond, cols


def _place(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """On the GPU when it takes under a quarter of the free memory; otherwise stay in (pinned) host memory."""
    if not runtime.is_cuda:
        return images
    free, _ = torch.cuda.mem_get_info(runtime.device)
    return images.to(runtime.device) if images.numel() < free // 4 else images.pin_memory()


def _first_layer_contiguous(G: Generator) -> None:
    """G's first layer sees a 1x1 input, so channels-last buys nothing there, and its ambiguous strides make
    torch.compile (2.11) mispredict the layout of that weight's gradient; keep that one weight contiguous."""
    w = G.net[0][0].weight
    w.data = w.data.contiguous()


def _grad_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


def sync_device(runtime: Runtime) -> None:
    if runtime.is_cuda:
        torch.cuda.synchronize(runtime.device)
