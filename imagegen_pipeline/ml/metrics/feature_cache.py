"""Reference statistics of a real split, computed once per (content, detector) and kept on disk.

An entry is a folder `<root>/<detector_id>/<content_key>/` holding features.npy (float32 (N, D)),
mu.npy (float64 (D,)) and sigma.npy (float64 (D, D)), each written atomically, and meta.json written
last: an entry without meta.json is incomplete and gets recomputed. Keys are content hashes, so new
data can never be scored against stale statistics. Files load with allow_pickle=False.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np
import torch

from imagegen_pipeline.atomic import atomic_path, write_json_atomic
from imagegen_pipeline.ml.metrics.fid import feature_stats

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class FeatureDetector(Protocol):
    detector_id: str

    def features(self, images_uint8: torch.Tensor) -> np.ndarray: ...


@dataclass
class ReferenceStats:
    features: np.ndarray  # (N, D) float32
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64


def hash_row_ids(row_hashes: Iterable[str]) -> str:
    """Content key from the shards' per-row sha256 column, in row order (features are stored in that order)."""
    h = hashlib.sha256()
    for value in row_hashes:
        h.update(str(value).encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


def hash_images(images_uint8: torch.Tensor | np.ndarray) -> str:
    """Content key from the uint8 pixels and their shape."""
    a = np.ascontiguousarray(torch.as_tensor(images_uint8).cpu().numpy())
    h = hashlib.sha256(repr((a.dtype.str, a.shape)).encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:32]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a handle: np.save would append .npy to a name
        np.save(fh, array, allow_pickle=False)


class FeatureCache:
    """Detector features and (mu, sigma) of real splits under one root folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def entry_dir(self, content_key: str, detector_id: str) -> Path:
        for part in (content_key, detector_id):
            if not _SAFE.match(part):
                raise ValueError(f"cache key parts must match {_SAFE.pattern}, got {part!r}")
        return self.root / detector_id / content_key

    def load(self, content_key: str, detector_id: str) -> ReferenceStats | None:
        d = self.entry_dir(content_key, detector_id)
        if not (d / "meta.json").is_file():
            return None
        return ReferenceStats(*(np.load(d / f"{name}.npy", allow_pickle=False) for name in ("features", "mu", "sigma")))

    def store(self, content_key: str, detector_id: str, features: np.ndarray) -> ReferenceStats:
        d = self.entry_dir(content_key, detector_id)
        mu, sigma = feature_stats(features)
        stats = ReferenceStats(np.asarray(features, dtype=np.float32), mu, sigma)
        (d / "meta.json").unlink(missing_ok=True)  # incomplete until meta.json is back
        for name in ("features", "mu", "sigma"):
            _save_npy(d / f"{name}.npy", getattr(stats, name))
        write_json_atomic(d / "meta.json", {"content_key": content_key, "detector_id": detector_id,
                                            "n": int(stats.features.shape[0]), "dim": int(stats.features.shape[1])})
        return stats

    def get_or_compute(self, content_key: str, detector_id: str, compute: Callable[[], np.ndarray]) -> ReferenceStats:
        """The cached entry, or `compute()` -> (N, D) features stored and returned."""
        cached = self.load(content_key, detector_id)
        return cached if cached is not None else self.store(content_key, detector_id, compute())


def cached_reference_stats(cache: FeatureCache, detector: FeatureDetector, images_uint8: torch.Tensor, *,
                           content_key: str | None = None) -> ReferenceStats:
    """Reference stats of uint8 (N, C, H, W) images; keyed by `content_key` (e.g. `hash_row_ids`) or the pixels."""
    key = content_key or hash_images(images_uint8)
    return cache.get_or_compute(key, detector.detector_id, lambda: detector.features(images_uint8))
