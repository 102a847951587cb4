"""Conditional accuracy: does the generator draw the class it was asked for, judged by the dataset classifier."""

from __future__ import annotations

import numpy as np

from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric


def class_accuracy(probs: np.ndarray, requested: np.ndarray) -> tuple[float, dict[int, tuple[float, int]]]:
    """(N, K) probabilities, (N,) requested classes -> (overall accuracy, {class: (accuracy, count)})."""
    probs, requested = np.asarray(probs), np.asarray(requested).astype(np.int64)
    if probs.ndim != 2 or len(probs) != len(requested) or len(probs) == 0:
        raise MetricUnavailable(f"conditional accuracy needs (N, K) probs and (N,) labels, "
                                f"got {probs.shape} and {requested.shape}")
    hit = probs.argmax(axis=1) == requested  # (N,)
    per_class = {int(c): (float(hit[requested == c].mean()), int((requested == c).sum()))
                 for c in np.unique(requested)}
    return float(hit.mean()), per_class


@register_metric
def conditional_accuracy(ctx: MetricContext) -> dict:
    """Share of images generated for class c that the classifier assigns to c; overall and per class."""
    probs, labels = ctx.require("fake_probs", "fake_labels")
    overall, per_class = class_accuracy(probs, labels)
    return {"conditional_accuracy": overall,
            "conditional_accuracy_per_class": {ctx.class_name(c): acc for c, (acc, _) in per_class.items()}}
