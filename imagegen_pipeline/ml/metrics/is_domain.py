"""An Inception-Score-style number from the *dataset's own fine-tuned classifier*, hence `is_domain`.

exp(E_x KL(p(y|x) || p(y))) over `splits` parts (Salimans et al. 2016), but p(y|x) comes from our
classifier on the dataset's classes, not ImageNet Inception: it ranges from 1 (every image gets the same
prediction) to K (confident, class-balanced), and is not comparable to published Inception Scores.
"""

from __future__ import annotations

import numpy as np

from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric

EPS = 1e-12


def inception_style_score(probs: np.ndarray, *, splits: int = 10) -> tuple[float, float]:
    """(N, K) class probabilities -> (mean, std) over splits of exp(mean KL(p(y|x) || p(y)))."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < splits:
        raise MetricUnavailable(f"is_domain needs (N, K) probabilities with N >= splits={splits}, got {p.shape}")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)  # (1, K) marginal
        kl = (part * (np.log(part + EPS) - np.log(py + EPS))).sum(axis=1)  # (n,)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


@register_metric
def is_domain(ctx: MetricContext) -> dict:
    """Inception-style score of generated images under the dataset classifier (1 .. number of classes)."""
    (probs,) = ctx.require("fake_probs")
    mean, std = inception_style_score(probs, splits=ctx.is_splits)
    return {"is_domain": mean, "is_domain_std": std, "is_domain_max": int(np.asarray(probs).shape[1])}
