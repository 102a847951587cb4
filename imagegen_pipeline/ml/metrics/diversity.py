"""Sample diversity: mean pairwise cosine distance of generated images' embeddings, and the same inside each
asked-for label as a share of what real images of that label show (`diversity_ratio`).

Mode collapse shows as a low value (identical samples give 0); a conditional generator that ignores its noise
draws one picture per label and has a diversity ratio near 0 while its overall diversity looks healthy.
Computed in O(N D) from the sum of unit vectors: sum_{i != j} cos_ij = |sum_i u_i|^2 - N.
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


def within_label_diversity(embeddings: np.ndarray, labels: np.ndarray | None) -> float:
    """Mean over labels (with >= 2 rows) of the within-label diversity; the whole set when labels is None."""
    if labels is None:
        return mean_pairwise_cosine_distance(embeddings)
    labels = np.asarray(labels)
    values = [mean_pairwise_cosine_distance(embeddings[labels == c]) for c in np.unique(labels)
              if c >= 0 and (labels == c).sum() >= 2]
    if not values:
        raise MetricUnavailable("within-label diversity needs at least 2 images of one label")
    return float(np.mean(values))


@register_metric
def diversity_ratio(ctx: MetricContext) -> dict:
    """Within-label diversity of samples / the same of real reference images (1 = as varied as the data)."""
    fake, real = ctx.require("fake_embeddings", "real_embeddings")
    fake_labels = None if ctx.fake_labels is None else np.asarray(ctx.fake_labels)
    real_labels = None if fake_labels is None or ctx.real_labels is None else np.asarray(ctx.real_labels)
    if fake_labels is not None and real_labels is None:
        raise MetricUnavailable("diversity_ratio of a conditional generator needs the real images' labels")
    if real_labels is not None:  # compare label by label over the labels both sides have
        shared = np.intersect1d(np.unique(fake_labels), np.unique(real_labels[real_labels >= 0]))
        fake, fake_labels = fake[np.isin(fake_labels, shared)], fake_labels[np.isin(fake_labels, shared)]
        real, real_labels = real[np.isin(real_labels, shared)], real_labels[np.isin(real_labels, shared)]
    f, r = within_label_diversity(fake, fake_labels), within_label_diversity(real, real_labels)
    return {"diversity_ratio": f / max(r, 1e-12), "diversity_within_label": f, "diversity_within_label_real": r}
