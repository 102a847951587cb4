"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel.

k(x, y) = (x.y / d + 1)^3, averaged over random subsets as in stylegan2-ada's
`kernel_inception_distance.py`; unbiased, so it is ~0 (and can be slightly negative) for equal distributions.
"""

from __future__ import annotations

import numpy as np

from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric


def kid_from_features(real: np.ndarray, fake: np.ndarray, *, num_subsets: int = 100,
                      max_subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(N_r, D), (N_g, D) -> (mean, std) of the per-subset MMD^2 estimates."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    n = real.shape[1]
    m = min(len(real), len(fake), max_subset_size)
    if m < 2:
        raise MetricUnavailable(f"KID needs at least 2 images per side, got {len(real)} real, {len(fake)} fake")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)

    def kernel(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (u @ v.T / n + 1) ** 3  # (len(u), len(v))

    # up to 2,000 images a side (the quick protocol), the three kernel matrices are computed once and each subset
    # takes its rows and columns: the same numbers as per-subset products, without 3 x num_subsets matmuls
    whole = max(len(fake), len(real)) ** 2 <= WHOLE_KERNEL_MAX_PAIRS
    if whole:
        kxx, kyy, kxy = kernel(fake, fake), kernel(real, real), kernel(fake, real)
    for s in range(num_subsets):
        ix = rng.choice(len(fake), m, replace=False)
        iy = rng.choice(len(real), m, replace=False)
        if whole:
            a, b, c = kxx[np.ix_(ix, ix)], kyy[np.ix_(iy, iy)], kxy[np.ix_(ix, iy)]  # (m, m) each
        else:
            a, b, c = kernel(fake[ix], fake[ix]), kernel(real[iy], real[iy]), kernel(fake[ix], real[iy])
        within = (a.sum() - np.diag(a).sum()) + (b.sum() - np.diag(b).sum())  # off-diagonal: unbiased
        values[s] = (within / (m - 1) - c.sum() * 2 / m) / m
    return float(values.mean()), float(values.std())


WHOLE_KERNEL_MAX_PAIRS = 2000 * 2000  # 32 MB of float64 per kernel matrix


@register_metric
def kid(ctx: MetricContext) -> dict:
    """KID of generated vs reference images; reported with the std over subsets."""
    real, fake = ctx.require("real_features", "fake_features")
    mean, std = kid_from_features(real, fake, num_subsets=ctx.kid_subsets, max_subset_size=ctx.kid_subset_size,
                                  seed=ctx.seed)
    return {"kid": mean, "kid_std": std}
