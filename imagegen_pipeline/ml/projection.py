"""Projection into a generator's latent space: the z (and label) whose image is closest to a given image.

Loss per image: LPIPS(G(z), x) + 1.0 * mean squared error of the pixels in [0, 1]. Both terms are of one order
(LPIPS of unlike images 0.1-0.7, pixel MSE 0.02-0.3), so they get equal weight: LPIPS steers the structure and the
L2 term the intensities that LPIPS' unit-normalised features ignore. z is unconstrained (no prior term); Adam,
lr 0.1 with a cosine decay, `steps` steps.

Restarts: `search` random z per image (per label, for a class model without a given label) are scored without
gradients, and the best `restarts` of them are optimised, all images and restarts in one batch; the best
restart wins. So a class model is searched over every label at the start, then refined on the promising ones.

The loss uses ST-LPIPS at the image's own size (32 or 64 px: no upsampling, 5x cheaper on a CPU than the 64-px
resize the metrics use), with the targets' features computed once; the reported `distances` are the metrics'
standard ST-LPIPS between each image and its (quantised) reconstruction, so they compare with
`lpips_memorization`'s figures.

`projection_gap` (after Webster et al. 2019, "Detecting overfitting of deep generative networks via latent
recovery"): mean projection distance of held-out images over that of training images. A generator that learned
the distribution reconstructs both about equally (ratio near 1); one that memorised its training set
reconstructs training images much better (ratio well above 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imagegen_pipeline.ml.dcgan.config import DCGANConfig
from imagegen_pipeline.ml.dcgan.sample import CondLike, as_cond
from imagegen_pipeline.ml.metrics.lpips import LPIPS, default_lpips
from imagegen_pipeline.ml.metrics.lpips_weights import VARIANT

LPIPS_WEIGHT = 1.0
PIXEL_WEIGHT = 1.0


@dataclass
class Projection:
    z: torch.Tensor  # (N, z_dim) the best latent of each image
    cond: torch.Tensor | None  # (N,) labels (class models; chosen or given), (N, text_dim) text, or None
    reconstructions: np.ndarray  # uint8 (N, C, H, W): G(z, cond), quantised like every sample
    distances: np.ndarray  # (N,) standard ST-LPIPS(image, reconstruction), as the metrics measure it
    pixel_mse: np.ndarray  # (N,) mean squared pixel error in [0, 1]
    losses: np.ndarray  # (N,) the optimised objective at the end (LPIPS at native size + pixel MSE)


def _as_unit_float(images: torch.Tensor | np.ndarray, cfg: DCGANConfig) -> torch.Tensor:
    """uint8 or [0, 1] float (N, C, H, W) of the generator's shape -> float32 in [0, 1]."""
    x = torch.as_tensor(images)
    expected = (cfg.channels, cfg.resolution, cfg.resolution)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"images must be (N, {', '.join(map(str, expected))}) for this generator, "
                         f"got {tuple(x.shape)}")
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float().clamp(0, 1)


def _objective(loss_net: LPIPS, recon01: torch.Tensor, target01: torch.Tensor, target_emb: torch.Tensor
               ) -> torch.Tensor:
    """(B,) LPIPS (via embeddings; the targets' computed once) + pixel MSE."""
    lp = (loss_net.embedding(recon01) - target_emb).pow(2).sum(1)
    return LPIPS_WEIGHT * lp + PIXEL_WEIGHT * (recon01 - target01).pow(2).flatten(1).mean(1)


def _candidate_conds(cfg: DCGANConfig, cond: CondLike, n: int) -> list[torch.Tensor | None]:
    """The conditions searched for each image: one per label for a class model without labels, else the given."""
    if cfg.conditioning == "class" and cond is None:
        return [torch.full((n,), k, dtype=torch.int64) for k in range(cfg.num_classes)]
    if cfg.conditioning == "text" and cond is None:
        raise ValueError("a text-conditioned generator needs the caption embedding(s) to project under")
    return [as_cond(cfg, cond, n)]


def project(generator: nn.Module, images: torch.Tensor | np.ndarray, *, cfg: DCGANConfig | None = None,
            cond: CondLike = None, steps: int = 200, restarts: int = 4, search: int = 16, lr: float = 0.1,
            seed: int = 0, loss_net: LPIPS | None = None, metric_net: LPIPS | None = None) -> Projection:
    """Project each image (uint8 or [0, 1] float (N, C, H, W), the generator's shape) into G's latent space.

    cond: None (class model: searched over every label), one label/embedding for all, or one per image.
    Cost: (search * labels + restarts * steps * 3) LPIPS passes per image at the image's size."""
    cfg = cfg or generator.cfg
    if steps < 0 or restarts < 1 or search < restarts:
        raise ValueError("need steps >= 0 and 1 <= restarts <= search")
    device = next(generator.parameters()).device
    target = _as_unit_float(images, cfg).to(device)  # (N, C, H, W)
    n = len(target)
    loss_net = (loss_net or default_lpips(min(cfg.resolution, 64))).to(device)
    gen = torch.Generator().manual_seed(int(seed))
    was_training = generator.training
    grads = [p.requires_grad for p in generator.parameters()]
    generator.eval().requires_grad_(False)  # BatchNorm running stats: every image depends only on its own z
    try:
        with torch.no_grad():
            target_emb = loss_net.embedding(target)  # (N, D)
            # search: `search` random z per image and candidate condition, scored; keep the best `restarts`
            conds = _candidate_conds(cfg, cond, n)
            z_all = torch.randn(len(conds), search, n, cfg.z_dim, generator=gen).to(device)  # (K, S, N, z)
            scores = torch.empty(len(conds), search, n, device=device)
            for k, c in enumerate(conds):
                for s in range(search):
                    recon = (generator(z_all[k, s], None if c is None else c.to(device)) + 1) / 2
                    scores[k, s] = _objective(loss_net, recon, target, target_emb)
            flat = scores.reshape(-1, n)  # (K*S, N)
            top = flat.topk(restarts, dim=0, largest=False).indices  # (R, N) into K*S
            cols = torch.arange(n, device=device)
            z0 = z_all.reshape(-1, n, cfg.z_dim)[top, cols[None, :]]  # (R, N, z)
            c_stack = None if conds[0] is None else torch.stack([c.to(device) for c in conds])  # (K, N, ...)
            c0 = None if c_stack is None else c_stack[top // search, cols[None, :]]  # (R, N, ...)
        z = z0.reshape(restarts * n, cfg.z_dim).clone().requires_grad_(True)  # row r*N + i: restart r of image i
        c = None if c0 is None else c0.reshape(restarts * n, *c0.shape[2:])
        tgt, tgt_emb = target.repeat(restarts, 1, 1, 1), target_emb.repeat(restarts, 1)
        opt = torch.optim.Adam([z], lr=lr)
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = _objective(loss_net, (generator(z, c) + 1) / 2, tgt, tgt_emb)  # (R*N,)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
        with torch.no_grad():
            x = (generator(z, c) + 1) / 2
            final = _objective(loss_net, x, tgt, tgt_emb).view(restarts, n)
            best = final.argmin(0)  # (N,) which restart
            rows = best * n + torch.arange(n, device=device)
            recon = ((x[rows].clamp(0, 1) * 255).round()).to(torch.uint8)  # (N, C, H, W)
            metric_net = (metric_net or default_lpips()).to(device)
            distances = metric_net.distance(target, recon).double().cpu().numpy()
            mse = F.mse_loss(recon.float() / 255, target, reduction="none").flatten(1).mean(1).double().cpu().numpy()
        return Projection(z[rows].detach().cpu(), None if c is None else c[rows].cpu(), recon.cpu().numpy(),
                          distances, mse, final[best, torch.arange(n, device=device)].double().cpu().numpy())
    finally:
        generator.train(was_training)
        for p, g in zip(generator.parameters(), grads):
            p.requires_grad_(g)


def projection_gap(generator: nn.Module, train_images: np.ndarray, test_images: np.ndarray, *,
                   cfg: DCGANConfig | None = None, train_cond: CondLike = None, test_cond: CondLike = None,
                   n: int = 32, steps: int = 200, restarts: int = 2, search: int = 8, seed: int = 0) -> dict:
    """Mean projection error of `n` held-out vs `n` training images (random subsets), and their ratio.

    A ratio well above 1 (held-out images much harder to reconstruct than training ones) = memorised. Labels
    (`*_cond`, one per image) are used when given; otherwise a class model searches every label."""
    cfg = cfg or generator.cfg
    rng = np.random.default_rng(seed)
    out = {}
    for name, images, cond in (("train", train_images, train_cond), ("test", test_images, test_cond)):
        images = np.asarray(images)
        pick = np.sort(rng.choice(len(images), min(n, len(images)), replace=False))
        c = None if cond is None else np.asarray(cond)[pick]
        out[name] = project(generator, images[pick], cfg=cfg, cond=c, steps=steps, restarts=restarts, search=search,
                            seed=seed)
    train, test = out["train"], out["test"]
    train_mean, test_mean = float(train.distances.mean()), float(test.distances.mean())
    se = {name: float(r.distances.std(ddof=1) / np.sqrt(len(r.distances))) if len(r.distances) > 1 else float("nan")
          for name, r in out.items()}  # standard errors: with a few dozen images the ratio is noisy
    return {"projection_train_lpips": round(train_mean, 4), "projection_test_lpips": round(test_mean, 4),
            "projection_train_lpips_se": round(se["train"], 4), "projection_test_lpips_se": round(se["test"], 4),
            "projection_gap": round(test_mean / max(train_mean, 1e-6), 4),
            "projection_train_mse": round(float(train.pixel_mse.mean()), 5),
            "projection_test_mse": round(float(test.pixel_mse.mean()), 5),
            "projection_images": [len(train.distances), len(test.distances)], "projection_steps": steps,
            "projection_restarts": restarts, "lpips_variant": VARIANT}
