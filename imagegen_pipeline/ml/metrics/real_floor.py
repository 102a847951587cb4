"""The real floor: FID/KID between two real splits (train vs val), the best a generator can be expected to score.

FID is biased upward at small N, so compare a model's FID with a floor computed on a similar number
of images (subsample the larger split before calling, if needed).
"""

from __future__ import annotations

import numpy as np

from imagegen_pipeline.ml.metrics.fid import fid_from_features
from imagegen_pipeline.ml.metrics.kid import kid_from_features
from imagegen_pipeline.ml.metrics.registry import MetricContext, register_metric


def real_floor_from_features(train: np.ndarray, val: np.ndarray, *, kid_subsets: int = 100,
                             kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """FID and KID between two real splits' detector features (N_a, D), (N_b, D)."""
    kid_mean, kid_std = kid_from_features(train, val, num_subsets=kid_subsets, max_subset_size=kid_subset_size,
                                          seed=seed)
    return {"real_floor_fid": fid_from_features(train, val), "real_floor_kid": kid_mean,
            "real_floor_kid_std": kid_std, "real_floor_n": [len(train), len(val)]}


@register_metric
def real_floor(ctx: MetricContext) -> dict:
    """FID/KID of the reference split vs the held-out real split."""
    real, heldout = ctx.require("real_features", "heldout_features")
    return real_floor_from_features(real, heldout, kid_subsets=ctx.kid_subsets, kid_subset_size=ctx.kid_subset_size,
                                    seed=ctx.seed)
