"""LPIPS memorization: how close, perceptually, each sample is to its nearest training image, against the same for
held-out real images. The `memorization` metric measures this in the extractor's embedding space, which was
trained to tell classes apart and may call two different drawings of one digit "close"; LPIPS is calibrated on
human judgements of whether two pictures look alike, and the shift-tolerant weights still match a copy moved by
a pixel or two. Held-out images are as near to the training set as a generator that draws from the data
distribution without copying should be, so a ratio (samples / held-out) well below 1 means copies.

Training images are `train_images`, held-out ones `real_images`. To run in seconds on a CPU, the metric
subsamples: by default 128 samples and 128 held-out images against 512 training images (about 5 s on one core at
32 px; `ctx.extra` keys `lpips_memorization_samples` and `lpips_memorization_train` change it); the counts are in
the output. A sample copied from a training image outside the subset is not seen as a copy, so on large training
sets this is a comparison of typical nearness, not a copy detector; `memorization` scans every training image.
"""

from __future__ import annotations

import numpy as np
import torch

from imagegen_pipeline.ml.metrics.lpips import default_lpips, sq_distances
from imagegen_pipeline.ml.metrics.lpips_weights import VARIANT, MissingLPIPSWeights
from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric


def nearest_lpips(queries: np.ndarray, train: np.ndarray, *, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """For each uint8 query image (N, C, H, W): (LPIPS to its nearest image of `train` (N,), that index (N,)).
    One network pass per image: the queries' embeddings stay in memory, training images stream in batches."""
    try:
        net = default_lpips()
    except MissingLPIPSWeights as exc:
        raise MetricUnavailable(str(exc)) from None
    q = net.embed(np.ascontiguousarray(queries), batch_size=batch_size)  # (N, D)
    best = torch.full((len(q),), float("inf"))
    index = torch.zeros(len(q), dtype=torch.int64)
    for i in range(0, len(train), batch_size):
        d = sq_distances(q, net.embed(np.ascontiguousarray(train[i:i + batch_size]), batch_size=batch_size))
        value, arg = (t.cpu() for t in d.min(1))  # (N,) each
        better = value < best
        best[better], index[better] = value[better], arg[better] + i
    return best.double().numpy(), index.numpy()


@register_metric
def lpips_memorization(ctx: MetricContext) -> dict:
    """Mean LPIPS from samples to their nearest training image vs the same for held-out images (ratio << 1: copies)."""
    fake, heldout, train = ctx.require("fake_images", "real_images", "train_images")
    fake, heldout, train = np.asarray(fake), np.asarray(heldout), np.asarray(train)
    if len(train) < 1 or len(fake) < 1 or len(heldout) < 1:
        raise MetricUnavailable(f"LPIPS memorization needs samples, held-out and training images, got "
                                f"{len(fake)}, {len(heldout)} and {len(train)}")
    if fake.shape[1:] != train.shape[1:] or heldout.shape[1:] != train.shape[1:]:
        raise MetricUnavailable(f"image shapes differ: samples {fake.shape[1:]}, held-out {heldout.shape[1:]}, "
                                f"training {train.shape[1:]}")
    n_query = max(1, int(ctx.extra.get("lpips_memorization_samples", 128)))
    n_train = max(1, int(ctx.extra.get("lpips_memorization_train", 512)))
    rng = np.random.default_rng(ctx.seed)
    fi = np.sort(rng.choice(len(fake), min(n_query, len(fake)), replace=False))
    hi = np.sort(rng.choice(len(heldout), min(n_query, len(heldout)), replace=False))
    ti = np.sort(rng.choice(len(train), min(n_train, len(train)), replace=False))
    d, idx = nearest_lpips(np.concatenate([fake[fi], heldout[hi]]), train[ti])
    d_fake, d_held = d[:len(fi)], d[len(fi):]
    order = np.argsort(d_fake, kind="stable")[:8]
    fake_mean, held_mean = float(d_fake.mean()), float(d_held.mean())
    return {"lpips_memorization_fake_nn_mean": round(fake_mean, 4),
            "lpips_memorization_fake_nn_median": round(float(np.median(d_fake)), 4),
            "lpips_memorization_heldout_nn_mean": round(held_mean, 4),
            "lpips_memorization_heldout_nn_median": round(float(np.median(d_held)), 4),
            "lpips_memorization_ratio": round(fake_mean / max(held_mean, 1e-6), 4),
            "lpips_memorization_closest": [{"sample": int(fi[i]), "train": int(ti[idx[i]]),
                                            "distance": round(float(d_fake[i]), 4)} for i in order],
            "lpips_memorization_subsample": {"samples": len(fi), "heldout": len(hi), "train": len(ti),
                                             "of_samples": len(fake), "of_heldout": len(heldout),
                                             "of_train": len(train)},
            "lpips_variant": VARIANT}
