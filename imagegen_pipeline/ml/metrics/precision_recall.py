"""Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds, k = 3 by default.

Each set's manifold is the union of balls around its points, radius = distance to the k-th nearest
neighbour within the set. Precision: share of generated points inside the real manifold (quality).
Recall: share of real points inside the generated manifold (coverage). The paper uses VGG-16 features;
here any feature space can be passed (the registered metric uses the Inception features).
"""

from __future__ import annotations

import numpy as np

from imagegen_pipeline.ml.metrics.knn import kth_neighbour_sq_radii, within_any_radius
from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= n else x[np.sort(rng.choice(len(x), n, replace=False))]


def precision_recall_from_features(real: np.ndarray, fake: np.ndarray, *, k: int = 3, max_samples: int = 10_000,
                                   seed: int = 0, device: str = "cpu") -> tuple[float, float]:
    """(N_r, D), (N_g, D) -> (precision, recall), each in [0, 1]."""
    rng = np.random.default_rng(seed)
    real, fake = _subsample(np.asarray(real), max_samples, rng), _subsample(np.asarray(fake), max_samples, rng)
    if min(len(real), len(fake)) <= k:
        raise MetricUnavailable(f"precision/recall needs more than k={k} images per side, "
                                f"got {len(real)} real, {len(fake)} fake")
    real_r = kth_neighbour_sq_radii(real, k, device=device)  # (N_r,)
    fake_r = kth_neighbour_sq_radii(fake, k, device=device)  # (N_g,)
    precision = within_any_radius(fake, real, real_r, device=device).mean()
    recall = within_any_radius(real, fake, fake_r, device=device).mean()
    return float(precision), float(recall)


@register_metric
def precision_recall(ctx: MetricContext) -> dict:
    """Precision and recall of generated vs reference images in Inception feature space."""
    real, fake = ctx.require("real_features", "fake_features")
    p, r = precision_recall_from_features(real, fake, k=ctx.pr_k, max_samples=ctx.pr_max_samples, seed=ctx.seed,
                                          device=ctx.device)
    return {"precision": p, "recall": r}
