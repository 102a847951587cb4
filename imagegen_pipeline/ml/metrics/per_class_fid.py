"""FID per class: a conditional generator can be good overall and poor on one class.

A class is scored only when both sides have at least `min_count` images; FID on a handful of images
is dominated by its own bias, so smaller classes are skipped with the reason recorded.
"""

from __future__ import annotations

import numpy as np

from imagegen_pipeline.ml.metrics.fid import fid_from_features
from imagegen_pipeline.ml.metrics.registry import MetricContext, register_metric


def per_class_fids(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray, *,
                   min_count: int = 100) -> tuple[dict[int, float], dict[int, str]]:
    """-> ({class: FID}, {class: why skipped}) over the union of classes on either side."""
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    scores: dict[int, float] = {}
    skipped: dict[int, str] = {}
    for c in np.union1d(real_labels, fake_labels).astype(np.int64):
        n_real, n_fake = int((real_labels == c).sum()), int((fake_labels == c).sum())
        if min(n_real, n_fake) < max(min_count, 2):
            skipped[int(c)] = f"{n_real} real and {n_fake} generated images, need {min_count} of each"
            continue
        scores[int(c)] = fid_from_features(real[real_labels == c], fake[fake_labels == c])
    return scores, skipped


@register_metric
def per_class_fid(ctx: MetricContext) -> dict:
    """FID per class (reference images of class c vs images generated for class c), plus their mean."""
    real, real_labels, fake, fake_labels = ctx.require("real_features", "real_labels", "fake_features", "fake_labels")
    scores, skipped = per_class_fids(real, real_labels, fake, fake_labels, min_count=ctx.per_class_min)
    return {"per_class_fid": {ctx.class_name(c): v for c, v in scores.items()},
            "per_class_fid_mean": float(np.mean(list(scores.values()))) if scores else None,
            "per_class_fid_skipped": {ctx.class_name(c): why for c, why in skipped.items()}}
