"""LPIPS diversity (as in BicycleGAN, Zhu et al. 2017): the mean perceptual distance between images of one class,
for samples and for real images. MS-SSIM compares local statistics; LPIPS compares deep features, so it also
sees a generator that varies only in stroke texture while drawing one shape. A ratio below 1 means samples of a
class are less varied than the data.

Each class is scored on a random subset of at most `lpips_diversity_images` images per side (default 24; all
pairs of that subset, the exact mean over its pairs from one network pass per image), so the 1,000-sample
"quick" protocol costs a few seconds on a CPU. The report names the LPIPS weights (`lpips_variant`).
"""

from __future__ import annotations

import numpy as np

from imagegen_pipeline.ml.metrics.lpips import default_lpips, mean_pairwise_lpips
from imagegen_pipeline.ml.metrics.lpips_weights import VARIANT, MissingLPIPSWeights
from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric


def mean_pair_lpips(images: np.ndarray, limit: int, rng: np.random.Generator) -> float:
    """Mean LPIPS over the pairs of distinct images of a random subset of at most `limit`: uint8 (N, C, H, W)."""
    if len(images) < 2:
        raise MetricUnavailable("LPIPS diversity needs at least 2 images")
    pick = np.sort(rng.choice(len(images), min(limit, len(images)), replace=False))
    try:
        net = default_lpips()
    except MissingLPIPSWeights as exc:
        raise MetricUnavailable(str(exc)) from None
    return mean_pairwise_lpips(net.embed(np.ascontiguousarray(images[pick])))


@register_metric
def lpips_diversity(ctx: MetricContext) -> dict:
    """Mean LPIPS of random same-class pairs, samples vs real; the ratio below 1 means samples are less varied."""
    fake, real = ctx.require("fake_images", "real_images")
    limit = max(2, int(ctx.extra.get("lpips_diversity_images", 24)))
    rng = np.random.default_rng(ctx.seed)
    fake_labels = None if ctx.fake_labels is None else np.asarray(ctx.fake_labels)
    real_labels = None if ctx.real_labels is None else np.asarray(ctx.real_labels)
    if fake_labels is None or real_labels is None:
        groups = {"all": (np.arange(len(fake)), np.arange(len(real)))}
        limit = max(limit, 64)  # one group: spend the budget of several classes on it
    else:
        groups = {ctx.class_name(int(c)): (np.flatnonzero(fake_labels == c), np.flatnonzero(real_labels == c))
                  for c in np.unique(fake_labels) if c >= 0}
    groups = {name: (f, r) for name, (f, r) in groups.items() if len(f) >= 2 and len(r) >= 2}
    if not groups:
        raise MetricUnavailable("LPIPS diversity needs 2 samples and 2 real images of at least one class")
    limit = max(4, min(limit, 480 // len(groups)))  # many classes: fewer images each, about the same total cost
    per_class = {name: (mean_pair_lpips(fake[f], limit, rng), mean_pair_lpips(real[r], limit, rng))
                 for name, (f, r) in groups.items()}
    fake_mean = float(np.mean([f for f, _ in per_class.values()]))
    real_mean = float(np.mean([r for _, r in per_class.values()]))
    return {"lpips_diversity_fake": round(fake_mean, 4), "lpips_diversity_real": round(real_mean, 4),
            "lpips_diversity_ratio": round(fake_mean / max(real_mean, 1e-6), 4),
            "lpips_diversity_per_class": {k: {"fake": round(f, 4), "real": round(r, 4)}
                                          for k, (f, r) in per_class.items()},
            "lpips_diversity_images_per_class": limit, "lpips_variant": VARIANT}
