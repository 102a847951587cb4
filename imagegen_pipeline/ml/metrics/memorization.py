"""Memorization: how close each generated sample is to its nearest training image, in an embedding space.

The scale comes from the training set itself: the typical (median, by default) distance from a training
image to its nearest *other* training image. A generator that copies lands closer than that far more often
than the ~half that an independent draw from the data distribution would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imagegen_pipeline.ml.metrics.knn import nearest_neighbours
from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric


@dataclass
class Memorization:
    distances: np.ndarray  # (N_g,) Euclidean distance of each sample to its nearest training image
    indices: np.ndarray  # (N_g,) index of that training image
    train_threshold: float  # the chosen quantile of train-train nearest-neighbour distances
    share_closer: float  # share of samples with distance < train_threshold

    def closest(self, *, n: int = 16) -> list[dict]:
        """The n samples nearest to a training image: candidates for a side-by-side gallery."""
        order = np.argsort(self.distances, kind="stable")[:n]
        return [{"sample": int(i), "train": int(self.indices[i]), "distance": float(self.distances[i])}
                for i in order]


def find_nearest_train(fake: np.ndarray, train: np.ndarray, *, quantile: float = 0.5, max_train_probe: int = 5000,
                       seed: int = 0, device: str = "cpu") -> Memorization:
    """(N_g, D) samples, (N_t, D) training embeddings -> nearest training image per sample and the train scale."""
    fake, train = np.asarray(fake), np.asarray(train)
    if len(train) < 2 or len(fake) < 1:
        raise MetricUnavailable(f"memorization needs >= 2 training and >= 1 generated embeddings, "
                                f"got {len(train)} and {len(fake)}")
    distances, indices = nearest_neighbours(fake, train, device=device)
    rng = np.random.default_rng(seed)
    probe = np.sort(rng.choice(len(train), min(max_train_probe, len(train)), replace=False))  # train rows to probe
    train_nn, _ = nearest_neighbours(train[probe], train, device=device, exclude=probe)
    threshold = float(np.quantile(train_nn, quantile))
    return Memorization(distances, indices, threshold, float((distances < threshold).mean()))


@register_metric
def memorization(ctx: MetricContext) -> dict:
    """Nearest-training-image distances of generated samples (extractor embeddings), summarised."""
    fake, train = ctx.require("fake_embeddings", "train_embeddings")
    m = find_nearest_train(fake, train, seed=ctx.seed, device=ctx.device)
    return {"memorization_nn_distance_mean": float(m.distances.mean()),
            "memorization_nn_distance_median": float(np.median(m.distances)),
            "memorization_nn_distance_min": float(m.distances.min()),
            "memorization_train_nn_median": m.train_threshold,
            "memorization_share_closer_than_train": m.share_closer,
            "memorization_closest": m.closest()}
