"""Sample diversity: mean pairwise cosine distance of generated images' embeddings.

Mode collapse shows as a low value (identical samples give 0). Computed in O(N D) from the sum of unit
vectors: sum_{i != j} cos_ij = |sum_i u_i|^2 - N. Per class too, when the requested labels are known,
because a conditional generator can collapse inside one class while the overall number looks healthy.
"""

from __future__ import annotations

import numpy as np

from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric


def mean_pairwise_cosine_distance(embeddings: np.ndarray) -> float:
    """(N, D) -> mean over pairs i != j of 1 - cos(e_i, e_j), in [0, 2]."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or len(e) < 2:
        raise MetricUnavailable(f"diversity needs at least 2 embeddings (N, D), got {e.shape}")
    u = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)  # (N, D) unit rows
    s = u.sum(axis=0)  # (D,)
    n = len(u)
    mean_cos = (s @ s - (u * u).sum()) / (n * (n - 1))
    return float(1.0 - mean_cos)


@register_metric
def diversity(ctx: MetricContext) -> dict:
    """Mean pairwise cosine distance of generated embeddings, overall and per requested class."""
    (emb,) = ctx.require("fake_embeddings")
    out: dict = {"diversity": mean_pairwise_cosine_distance(emb)}
    if ctx.fake_labels is not None:
        labels = np.asarray(ctx.fake_labels)
        out["diversity_per_class"] = {ctx.class_name(int(c)): mean_pairwise_cosine_distance(emb[labels == c])
                                      for c in np.unique(labels) if (labels == c).sum() >= 2}
    return out
