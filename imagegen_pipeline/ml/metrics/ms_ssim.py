"""MS-SSIM diversity (Odena et al. 2017, the AC-GAN paper): the mean multi-scale structural similarity of random
pairs of images of one class, for samples and for real images. Samples more alike than real pairs (a ratio
above 1) mean the generator collapses inside a class, whatever FID says about the set as a whole.

MS-SSIM (Wang et al. 2003) in plain PyTorch: a Gaussian window, contrast-structure terms at each scale and the
luminance term at the coarsest, weighted by the paper's exponents. At 32 px there is room for three scales with
a 7-pixel window (32, 16, 8), so the first three weights are used, renormalised; negative contrast terms are
clipped to 0 (torchmetrics' `normalize="relu"`), which keeps the product defined. Only windows that lie inside
the image count (torchmetrics also scores reflect-padded borders, so its figures differ by about 0.01).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, finest scale first
C1, C2 = 0.01 ** 2, 0.03 ** 2  # stabilisers for a data range of 1


def _window(size: int, sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian: the 2-D window is its outer product, so two 1-D passes apply it."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _blur(maps: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The Gaussian window's mean over every valid position of every channel: (N, K, H, W) -> (N, K, h, w), as
    a row pass then a column pass (2k multiplies per pixel instead of k^2), all K maps in one grouped conv."""
    k = maps.shape[1]
    rows = F.conv2d(maps, g.view(1, 1, 1, -1).expand(k, 1, 1, len(g)), groups=k)
    return F.conv2d(rows, g.view(1, 1, -1, 1).expand(k, 1, len(g), 1), groups=k)


def scales_for(side: int, window: int) -> int:
    """How many scales fit: the coarsest image must still be at least one window wide."""
    n = 1
    while n < len(WEIGHTS) and side // 2 ** n >= window:
        n += 1
    return n


def ms_ssim(x: torch.Tensor, y: torch.Tensor, *, window: int = 7, sigma: float = 1.5,
            scales: int | None = None) -> torch.Tensor:
    """MS-SSIM of each pair: x, y (N, C, H, W) in [0, 1] -> (N,) in [0, 1], 1 for identical images."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"need two (N, C, H, W) batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    channels = x.shape[1]
    scales = scales or scales_for(min(x.shape[-2:]), window)
    weights = torch.tensor(WEIGHTS[:scales], dtype=torch.float64)
    weights = weights / weights.sum()
    g = _window(window, sigma)
    terms = []
    for s in range(scales):
        # x, y, x^2, y^2 and xy of every channel, blurred together: (N, 5C, h, w)
        blurred = _blur(torch.cat([x, y, x * x, y * y, x * y], 1), g)
        mu_x, mu_y, exx, eyy, exy = blurred.split(channels, 1)
        sxx = (exx - mu_x ** 2).clamp(min=0)
        syy = (eyy - mu_y ** 2).clamp(min=0)
        sxy = exy - mu_x * mu_y
        cs_map = (2 * sxy + C2) / (sxx + syy + C2)  # (N, C, h, w)
        if s == scales - 1:
            luminance = (2 * mu_x * mu_y + C1) / (mu_x ** 2 + mu_y ** 2 + C1)
            terms.append(torch.relu((cs_map * luminance).mean(dim=(1, 2, 3))))
        else:
            terms.append(torch.relu(cs_map.mean(dim=(1, 2, 3))))
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(terms)  # (scales, N): each averaged over channels and positions
    return torch.prod(stacked ** weights[:, None], dim=0).float()


def mean_pair_ms_ssim(images: np.ndarray, pairs: int, rng: np.random.Generator) -> float:
    """Mean MS-SSIM over `pairs` random pairs of distinct images: uint8 (N, C, H, W)."""
    if len(images) < 2:
        raise MetricUnavailable("MS-SSIM diversity needs at least 2 images")
    i = rng.integers(0, len(images), pairs)
    j = (i + rng.integers(1, len(images), pairs)) % len(images)  # never the same image
    t = torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0
    return float(ms_ssim(t[i], t[j]).mean())


@register_metric
def ms_ssim_diversity(ctx: MetricContext) -> dict:
    """Mean MS-SSIM of random same-class pairs, samples vs real; the ratio above 1 means samples are more alike."""
    fake, real = ctx.require("fake_images", "real_images")
    pairs = int(ctx.extra.get("ms_ssim_pairs", 200))
    rng = np.random.default_rng(ctx.seed)
    fake_labels = None if ctx.fake_labels is None else np.asarray(ctx.fake_labels)
    real_labels = None if ctx.real_labels is None else np.asarray(ctx.real_labels)
    if fake_labels is None or real_labels is None:
        groups = {"all": (np.arange(len(fake)), np.arange(len(real)))}
    else:
        groups = {ctx.class_name(int(c)): (np.flatnonzero(fake_labels == c), np.flatnonzero(real_labels == c))
                  for c in np.unique(fake_labels) if c >= 0}
    groups = {name: (f, r) for name, (f, r) in groups.items() if len(f) >= 2 and len(r) >= 2}
    pairs = max(10, min(pairs, 4000 // max(1, len(groups))))  # many classes: fewer pairs each, same total cost
    per_class = {name: (mean_pair_ms_ssim(fake[f], pairs, rng), mean_pair_ms_ssim(real[r], pairs, rng))
                 for name, (f, r) in groups.items()}
    if not per_class:
        raise MetricUnavailable("MS-SSIM diversity needs 2 samples and 2 real images of at least one class")
    fake_mean = float(np.mean([f for f, _ in per_class.values()]))
    real_mean = float(np.mean([r for _, r in per_class.values()]))
    return {"ms_ssim_fake": round(fake_mean, 4), "ms_ssim_real": round(real_mean, 4),
            "ms_ssim_ratio": round(fake_mean / max(real_mean, 1e-6), 4),
            "ms_ssim_per_class": {k: {"fake": round(f, 4), "real": round(r, 4)} for k, (f, r) in per_class.items()},
            "ms_ssim_scales": scales_for(min(fake.shape[-2:]), 7), "ms_ssim_pairs_per_class": pairs}
