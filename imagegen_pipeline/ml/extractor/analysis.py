"""What the embeddings show: a 2-D map, the confusion matrix, near-duplicate images, and the saved model.

Everything here works on numpy arrays in memory and scales to ~100k x 1280 without an N x N matrix.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import torch
from safetensors import safe_open

from imagegen_pipeline.ml.checkpoint import load_weights, save_weights
from imagegen_pipeline.ml.extractor.network import ExtractorNet

EXTRACTOR_FORMAT = "imagegen-extractor/1"
META_KEY = "extractor_meta"


def pca_2d(embeddings: np.ndarray, *, block: int = 8192) -> np.ndarray:
    """(N, D) -> (N, 2) on the top two principal axes; signs fixed so reruns draw the same map."""
    x = np.asarray(embeddings, dtype=np.float32)
    mean = x.mean(axis=0, dtype=np.float64)
    cov = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for s in range(0, len(x), block):  # (D, D) covariance in blocks: no centred (N, D) copy
        xb = x[s:s + block] - mean.astype(np.float32)  # float32 products, float64 running sum
        cov += xb.T @ xb
    _, vecs = torch.linalg.eigh(torch.from_numpy(cov))  # ascending eigenvalues; torch's thread pool, not BLAS's
    axes = vecs.numpy()[:, ::-1][:, :2].copy()  # (D, 2)
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), [0, 1]])  # largest loading positive
    out = np.empty((len(x), 2), dtype=np.float32)
    for s in range(0, len(x), block):
        out[s:s + block] = (x[s:s + block].astype(np.float64) - mean) @ axes
    return out


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)  # Agg canvas without pyplot: no global state, safe in worker threads
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def embedding_map_png(xy: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *,
                      title: str = "embeddings (PCA)") -> bytes:
    """Scatter of (N, 2) points coloured by class (label -1 = unlabelled, grey); legend up to 20 classes."""
    fig = _figure((6, 6))
    ax = fig.add_subplot()
    labels = np.asarray(labels)
    cmap = matplotlib.colormaps["tab20" if len(class_names) <= 20 else "turbo"]
    size = max(1.0, min(12.0, 20000 / max(1, len(xy))))
    if (labels < 0).any():
        m = labels < 0
        ax.scatter(xy[m, 0], xy[m, 1], s=size, c="lightgrey", label="unlabelled", linewidths=0)
    for k, name in enumerate(class_names):
        m = labels == k
        if m.any():
            color = cmap(k) if len(class_names) <= 20 else cmap(k / max(1, len(class_names) - 1))
            ax.scatter(xy[m, 0], xy[m, 1], s=size, color=color, label=name, linewidths=0)
    if len(class_names) <= 20:
        ax.legend(markerscale=max(1.0, 8 / size), fontsize=8, loc="best", frameon=False)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def confusion_png(confusion: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Row-normalised confusion matrix (rows = true class); counts written in cells up to 20 classes."""
    c = np.asarray(confusion, dtype=np.float64)
    k = len(c)
    rates = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
    side = max(4.0, min(14.0, 0.45 * k + 2))
    fig = _figure((side, side))
    ax = fig.add_subplot()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=list(class_names), rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels=list(class_names), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if c[i, j]:
                    ax.text(j, i, int(c[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    return _png(fig)


def near_duplicates(embeddings: np.ndarray, ids: Sequence, *, threshold: float = 0.98, max_pairs: int = 100,
                    block: int = 1024, screen_dim: int = 64) -> list[tuple[object, object, float]]:
    """The `max_pairs` most similar pairs (id_a, id_b, cosine) with cosine >= threshold, most similar first.

    Exact, but screened, in (block x 4 block) tiles: every pair's cosine is first bounded from above in
    `screen_dim` + 1 dimensions (`_screen_vectors`), and only pairs whose bound reaches the bar get their full
    cosine. The bar is the threshold, raised to the `max_pairs`-th best cosine found so far once that many are
    found: a pair below it cannot make the list. A tile whose bound passes too many pairs is computed in full.
    On 70,000 MNIST embeddings of a fine-tuned extractor (2.5% of all pairs above 0.995: each class is tight) this
    took 6 s instead of 42-56 s for the plain (block x N) search, with the same pairs.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a cosine in (0, 1], got {threshold}")
    x = torch.nn.functional.normalize(torch.as_tensor(np.asarray(embeddings, dtype=np.float32)), dim=1)
    q = _screen_vectors(x, screen_dim)
    n, bar, cols = len(x), threshold, 4 * block
    found: list[tuple[float, int, int]] = []
    with torch.inference_mode():
        for s in range(0, n, block):
            for c0 in range(s, n, cols):
                i, j, vals = _tile_pairs(x, q, slice(s, s + block), slice(c0, c0 + cols), bar)
                if len(vals) > max_pairs:
                    top = torch.topk(vals, max_pairs).indices
                    i, j, vals = i[top], j[top], vals[top]
                found.extend(zip(vals.tolist(), i.tolist(), j.tolist()))
                if len(found) >= max_pairs:
                    found = sorted(found, key=lambda t: (-t[0], t[1], t[2]))[:max_pairs]
                    bar = max(threshold, found[-1][0])
    found = sorted(found, key=lambda t: (-t[0], t[1], t[2]))[:max_pairs]
    return [(ids[i], ids[j], float(v)) for v, i, j in found]


def _tile_pairs(x: torch.Tensor, q: torch.Tensor, rows: slice, cols: slice,
                bar: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs (i, j), i < j, of one tile with cosine >= bar, and their cosines: the bound first, exact after."""
    above = rows.start - cols.start + 1  # keep j > i: on and below that diagonal is a repeat or the image itself
    xr, xc = x[rows], x[cols]  # (b, D), (c, D)
    bound = (q[rows] @ q[cols].T).triu_(diagonal=above)  # (b, c) upper bounds of the cosines
    r, c = torch.nonzero(bound >= bar - SCREEN_SLACK, as_tuple=True)
    if len(r) > 2 * len(bound):  # the screen passes too much here: one exact tile is cheaper than gathers
        sims = (xr @ xc.T).triu_(diagonal=above)  # (b, c)
        r, c = torch.nonzero(sims >= bar, as_tuple=True)
        vals = sims[r, c]
    else:
        vals = (xr[r] * xc[c]).sum(dim=1)  # exact cosines of the screened pairs
        keep = vals >= bar
        r, c, vals = r[keep], c[keep], vals[keep]
    return r + rows.start, c + cols.start, vals


SCREEN_SLACK = 1e-4  # float32 rounding of the bound is ~1e-6: a pair at the threshold is never screened out


def _screen_vectors(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, D) unit rows -> (N, k + 1), k = min(dim, D): the rows' coordinates on the top-k eigenvectors of x^T x,
    then the length of what those leave out. For rows i, j with projections p and remainders e:
    q_i . q_j = p_i . p_j + |e_i| |e_j| >= p_i . p_j + e_i . e_j = x_i . x_j (Cauchy-Schwarz), so q's dot
    products bound the cosines from above and a pair below the threshold there is below it for sure."""
    k = min(dim, x.shape[1])
    with torch.inference_mode():
        _, vecs = torch.linalg.eigh((x.T @ x).double())  # (D, D), ascending eigenvalues; orthonormal columns
        p = x @ vecs[:, -k:].float()  # (N, k)
        # +1e-6 inside the root: rounding can only make a remainder longer, i.e. the bound looser, never tighter
        rest = ((x * x).sum(1) - (p * p).sum(1)).clamp_min(0).add_(1e-6).sqrt_()  # (N,)
        return torch.cat([p, rest[:, None]], dim=1)


def save_extractor(path: str | os.PathLike, model: ExtractorNet, meta: dict | None = None) -> Path:
    """Weights as safetensors, with num_classes, input_size and class_names (JSON) in its metadata: no pickle."""
    full = {"format": EXTRACTOR_FORMAT, **(meta or {}), "num_classes": model.num_classes,
            "input_size": model.input_size, "dropout": _dropout(model)}
    return save_weights(path, model.state_dict(), metadata={META_KEY: json.dumps(full)})


def load_extractor(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[ExtractorNet, dict]:
    """(model in eval mode, metadata) from a file written by `save_extractor`."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(META_KEY, "null") or "null")
    if not meta or meta.get("format") != EXTRACTOR_FORMAT:
        raise ValueError(f"{path} is not an extractor saved by save_extractor (no {META_KEY} metadata)")
    model = ExtractorNet(meta["num_classes"], input_size=meta["input_size"], dropout=meta.get("dropout", 0.2))
    model.load_state_dict(load_weights(path))
    return model.to(device).eval(), meta


def _dropout(model: ExtractorNet) -> float:
    return float(model.head[0].p) if model.head is not None else 0.0
