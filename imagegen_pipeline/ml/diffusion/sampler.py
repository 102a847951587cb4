"""Heun's 2nd-order sampler with EDM's time steps (Karras et al. 2022, algorithm 1, no churn: deterministic in
its starting noise) and classifier-free guidance (Ho & Salimans 2021)."""

from __future__ import annotations

import torch
from torch import nn

from imagegen_pipeline.ml.diffusion.config import DiffusionConfig
from imagegen_pipeline.ml.diffusion.unet import Denoiser


def time_steps(cfg: DiffusionConfig, steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """sigma_0 = sigma_max > ... > sigma_{steps-1} = sigma_min, then 0: (steps + 1,) float64."""
    i = torch.arange(steps, dtype=torch.float64, device=device)
    inv = 1 / cfg.rho
    t = (cfg.sigma_max ** inv + i / max(steps - 1, 1) * (cfg.sigma_min ** inv - cfg.sigma_max ** inv)) ** cfg.rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64, device=device)])


def guided(denoiser: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None,
           guidance: float) -> torch.Tensor:
    """D(x; sigma) under classifier-free guidance: D_null + w (D_cond - D_null), both in one batch. cond None
    on a conditional model samples its null condition (the unconditional model it learnt on the side).

    A text cond of shape (N, K, *cfg.text_shape) is K concepts composed with AND (Composable Diffusion, Liu et al. 2022):
    D_null + w sum_k (D_k - D_null), all K + 1 in one batch."""
    cfg: DiffusionConfig = denoiser.cfg
    n = len(x)
    sig = sigma.expand(n)
    if cfg.conditioning == "none":
        return denoiser(x, sig)
    if cond is None:
        dummy = torch.zeros(n, dtype=torch.int64, device=x.device) if cfg.conditioning == "class" \
            else torch.zeros(n, *cfg.text_shape, device=x.device)
        return denoiser(x, sig, dummy, torch.zeros(n, device=x.device))
    if cfg.conditioning == "text" and cond.ndim == len(cfg.text_shape) + 2:  # (N, K, *text_shape): K concepts
        k = cond.shape[1]
        conds = torch.cat([cond.transpose(0, 1).reshape(k * n, *cfg.text_shape), cond[:, 0]])  # concept-major, null
        keep = torch.cat([torch.ones(k * n, device=x.device), torch.zeros(n, device=x.device)])
        out = denoiser(x.repeat(k + 1, 1, 1, 1), sig.repeat(k + 1), conds, keep)
        d_null = out[k * n:]
        return d_null + guidance * (out[:k * n].reshape(k, n, *x.shape[1:]) - d_null).sum(0)
    if guidance == 1.0:
        return denoiser(x, sig, cond, torch.ones(n, device=x.device))
    keep = torch.cat([torch.ones(n, device=x.device), torch.zeros(n, device=x.device)])
    both = denoiser(torch.cat([x, x]), sig.repeat(2), torch.cat([cond, cond]), keep)
    d_cond, d_null = both[:n], both[n:]
    return d_null + guidance * (d_cond - d_null)


@torch.no_grad()
def edm_sample(denoiser: nn.Module, noise: torch.Tensor, cond: torch.Tensor | None = None, *,
               steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
    """noise (N, C, R, R) ~ N(0, I) -> images (N, C, R, R) in about [-1, 1]; deterministic in `noise`."""
    cfg: DiffusionConfig = denoiser.cfg
    steps = steps or cfg.sample_steps
    guidance = cfg.guidance if guidance is None else guidance
    t = time_steps(cfg, steps, noise.device)
    x = noise.double() * t[0]
    for i in range(steps):
        t_cur, t_next = t[i], t[i + 1]
        d = (x - guided(denoiser, x.float(), t_cur.float(), cond, guidance).double()) / t_cur
        x_next = x + (t_next - t_cur) * d  # Euler step
        if i < steps - 1:  # Heun's correction, except into sigma = 0
            d2 = (x_next - guided(denoiser, x_next.float(), t_next.float(), cond, guidance).double()) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x.float()


class DiffusionGenerator(nn.Module):
    """A trained denoiser with its sampler behind the generator interface: forward(z (N, C*R*R), cond) ->
    images (N, C, R, R) in [-1, 1]. z is the starting noise, so one seed gives one image, as for the GAN."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        self.denoiser = Denoiser(cfg)
        self.guidance = cfg.guidance  # a generation parameter: the serving model may set it per request
        self.steps = cfg.sample_steps

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        noise = z.reshape(len(z), cfg.channels, cfg.resolution, cfg.resolution)
        if cond is not None and cfg.conditioning == "text":
            cond = cond.float()
        return edm_sample(self.denoiser, noise, cond, steps=self.steps, guidance=self.guidance).clamp(-1, 1)
