"""The metric registry (after stylegan2-ada's `metric_main.py`): name -> fn(ctx) -> dict, results as JSON lines.

A metric is a function of a `MetricContext` that returns a flat-ish, JSON-able dict. It pulls what it needs
with `ctx.require(...)`; a missing input raises `MetricUnavailable`, which `compute_metrics` records as a
skip with its reason instead of failing the whole evaluation.

A costly metric can be registered opt-in, `@register_metric(default=False)`: `list_metrics()` (the default set an
evaluation runs) leaves it out, and it runs only where named (`EvalConfig.metrics`, `compute_metrics([...])`).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np



class MetricUnavailable(RuntimeError):
    """A metric cannot run on this context (an input is missing, too few samples ...); the message says why."""


@dataclass(eq=False)
class MetricContext:
    """Everything precomputed that metrics read. Arrays are numpy; leave a field None if you do not have it."""

    real_features: np.ndarray | None = None  # (N_r, 2048) detector features of the reference split (e.g. train)
    real_stats: tuple[np.ndarray, np.ndarray] | None = None  # cached (mu (2048,), sigma (2048, 2048)) of real_features
    real_labels: np.ndarray | None = None  # (N_r,) int class of each reference image (per-class FID)
    heldout_features: np.ndarray | None = None  # (N_h, 2048) a second real split (e.g. val): the real floor
    fake_features: np.ndarray | None = None  # (N_g, 2048) detector features of generated images
    fake_labels: np.ndarray | None = None  # (N_g,) int class each generated image was asked for
    fake_probs: np.ndarray | None = None  # (N_g, K) the dataset classifier's probabilities for generated images
    fake_embeddings: np.ndarray | None = None  # (N_g, D) generated images in the feature-extractor space
    train_embeddings: np.ndarray | None = None  # (N_t, D) training images in the same space (memorization)
    real_embeddings: np.ndarray | None = None  # (N_r, D) reference images in the same space (diversity vs real)
    fake_images: np.ndarray | None = None  # (N_g, C, H, W) uint8 generated pixels (MS-SSIM)
    real_images: np.ndarray | None = None  # (N_r, C, H, W) uint8 reference pixels, rows as real_labels
    train_images: np.ndarray | None = None  # (N_t, C, H, W) uint8 training pixels (LPIPS memorization)
    train_labels: np.ndarray | None = None  # (N_t,) int class of each training image, rows as train_images (CAS)
    # more samples on demand: (int labels (N,), seed) -> uint8 (N, C, H, W); labels are ignored by unconditional
    # models; set for class-conditional generators (CAS, augmentation)
    sample: Callable[[np.ndarray, int], np.ndarray] | None = None
    generator: Any = None  # the generator itself (nn.Module in eval mode, `.cfg`), for metrics that optimise through it
    class_names: list[str] | None = None  # index -> name, for per-class keys; str(index) without it
    # composed pictures (a subject face with an accessory or "none"), as concept_judge.ConceptSet bundles: the real
    # set shows every pair, held-out ones included (the concept judge fits on it, the generator never does); the
    # fake set is generated pictures with the pair each was asked for; the held-out pairs are the (subject,
    # accessory) names the generator never trained on
    concept_real: Any = None
    concept_fake: Any = None
    concept_heldout_pairs: Sequence[tuple[str, str]] | None = None
    fid_bootstrap: int = 8  # FID: resamples of the generated set for fid_std (0 = skip)
    kid_subsets: int = 100  # KID: number of random subsets (stylegan2-ada default)
    kid_subset_size: int = 1000  # KID: max images per subset
    pr_k: int = 3  # precision/recall: k of the k-NN manifold radius (Kynkäänniemi et al. 2019)
    pr_max_samples: int = 10_000  # precision/recall: subsample each side to at most this many
    is_splits: int = 10  # is_domain: number of splits for mean/std
    per_class_min: int = 100  # per-class FID: minimum images of a class on both sides
    seed: int = 0  # subset sampling (KID, precision/recall) is reproducible
    device: str = "cpu"  # where blocked distance computations run ('cpu' or 'cuda')
    extra: dict[str, Any] = field(default_factory=dict)  # anything a plugged-in metric needs

    def require(self, *names: str) -> tuple:
        """The named fields, or MetricUnavailable naming the ones that are None."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise MetricUnavailable(f"needs {', '.join(missing)} in the MetricContext")
        return tuple(getattr(self, n) for n in names)

    def class_name(self, index: int) -> str:
        return self.class_names[index] if self.class_names and 0 <= index < len(self.class_names) else str(index)


MetricFn = Callable[[MetricContext], dict]
_METRICS: dict[str, MetricFn] = {}
_OPT_IN: set[str] = set()  # registered, but run only when named


def register_metric(fn: MetricFn | None = None, *, default: bool = True):
    """Decorator: make `fn` computable by its name. `@register_metric(default=False)`: opt-in, left out of
    `list_metrics()` (what an evaluation runs when it names none) and run only when asked for by name."""
    def add(f: MetricFn) -> MetricFn:
        if not callable(f):
            raise TypeError("register_metric decorates a function ctx -> dict")
        _METRICS[f.__name__] = f
        (_OPT_IN.discard if default else _OPT_IN.add)(f.__name__)
        return f

    return add if fn is None else add(fn)


def list_metrics(*, include_opt_in: bool = False) -> list[str]:
    """The metrics run by default; with include_opt_in, every registered one."""
    return sorted(n for n in _METRICS if include_opt_in or n not in _OPT_IN)


def compute_metrics(names: Sequence[str], ctx: MetricContext, *, skip_unavailable: bool = True) -> dict:
    """{'results': merged metric dicts, 'skipped': {name: reason}, 'seconds': {name: s}}; unknown names fail early."""
    unknown = [n for n in names if n not in _METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; registered: {list_metrics(include_opt_in=True)}")
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in names:
        t = time.perf_counter()
        try:
            out = _METRICS[name](ctx)
        except MetricUnavailable as e:
            if not skip_unavailable:
                raise
            skipped[name] = str(e)
            continue
        finally:
            seconds[name] = round(time.perf_counter() - t, 4)
        results.update(out)
    return {"results": to_jsonable(results), "skipped": skipped, "seconds": seconds}


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays -> Python numbers and lists, so json.dumps takes any metric's dict."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def append_jsonl(path: str | os.PathLike, record: dict) -> Path:
    """Append one JSON line with a single O_APPEND write under an exclusive lock: concurrent writers (two
    evaluations of one dataset) never lose each other's lines, and readers skip a torn last line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(to_jsonable(record), sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size:  # a writer killed mid-line left no newline: start on a fresh line
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every complete JSON line; a torn line (a writer killed mid-write) is skipped, not fatal."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            if line.strip():
                out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
