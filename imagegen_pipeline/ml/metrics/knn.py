"""Blocked nearest-neighbour helpers shared by precision/recall and memorization.

Squared Euclidean distances come from |x|^2 + |y|^2 - 2 x.y in float32 on the chosen device, one block
of rows at a time (at most ~256 MB of distances live at once). Both sets are centred on y's mean first,
which is distance-preserving and keeps the cancellation error small.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

BLOCK_ELEMENTS = 1 << 26  # distances per block (64 Mi float32 = 256 MB)


def _prepare(x: np.ndarray, y: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) arrays, got {x.shape} and {y.shape}")
    center = y.mean(axis=0, keepdims=True)
    return (torch.from_numpy(x - center).to(device, torch.float32),
            torch.from_numpy(y - center).to(device, torch.float32))


def sq_dist_blocks(x: np.ndarray, y: np.ndarray, *, device: str = "cpu") -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (row offset, squared distances (B, M)) covering all rows of x (N, D) against y (M, D)."""
    tx, ty = _prepare(x, y, device)
    y_sq = (ty * ty).sum(dim=1)  # (M,)
    block = max(1, min(8192, BLOCK_ELEMENTS // max(1, len(ty))))
    for i in range(0, len(tx), block):
        xb = tx[i:i + block]  # (B, D)
        d = (xb * xb).sum(dim=1, keepdim=True) + y_sq[None, :] - 2.0 * (xb @ ty.T)  # (B, M)
        yield i, d.clamp_(min=0.0)


def kth_neighbour_sq_radii(x: np.ndarray, k: int, *, device: str = "cpu") -> np.ndarray:
    """(N,) squared distance from each row of x to its k-th nearest *other* row of x."""
    if len(x) <= k:
        raise ValueError(f"need more than k={k} points for k-NN radii, got {len(x)}")
    out = np.empty(len(x), dtype=np.float64)
    for i, d in sq_dist_blocks(x, x, device=device):
        out[i:i + len(d)] = d.kthvalue(k + 1, dim=1).values.double().cpu().numpy()  # +1: the point itself
    return out


def within_any_radius(x: np.ndarray, y: np.ndarray, y_sq_radii: np.ndarray, *, device: str = "cpu") -> np.ndarray:
    """(N,) bool: is row i of x inside the ball of some row j of y (|x_i - y_j|^2 <= r_j^2)?"""
    r = torch.as_tensor(y_sq_radii, dtype=torch.float32, device=device)
    out = np.empty(len(x), dtype=bool)
    for i, d in sq_dist_blocks(x, y, device=device):
        out[i:i + len(d)] = (d <= r[None, :]).any(dim=1).cpu().numpy()
    return out


def nearest_neighbours(x: np.ndarray, y: np.ndarray, *, device: str = "cpu",
                       exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each row of x: (Euclidean distance (N,), index (N,)) of its nearest row of y.

    `exclude[i]` is a row of y that row i may not match: itself, when x is a sample of y.
    """
    dist = np.empty(len(x), dtype=np.float64)
    index = np.empty(len(x), dtype=np.int64)
    skip = None if exclude is None else torch.as_tensor(np.asarray(exclude, np.int64), device=device)
    for i, d in sq_dist_blocks(x, y, device=device):
        if skip is not None:
            d[torch.arange(len(d), device=d.device), skip[i:i + len(d)]] = float("inf")
        best = d.min(dim=1)
        dist[i:i + len(d)] = best.values.double().sqrt().cpu().numpy()
        index[i:i + len(d)] = best.indices.cpu().numpy()
    return dist, index
