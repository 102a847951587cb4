"""A preview grid of accepted images, spread over classes, for people to check what was ingested."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from imagegen_pipeline.ingest.validate import load_normalized
from imagegen_pipeline.ml.grids import image_grid, png_bytes


def spread_sample(accepted: pd.DataFrame, n: int) -> list[str]:
    """Up to `n` paths, round-robin over labels so every class shows up."""
    groups = [g["path"].tolist() for _, g in accepted.sort_values("path").groupby("label", dropna=False)]
    picked: list[str] = []
    i = 0
    while len(picked) < n and any(i < len(g) for g in groups):
        picked += [g[i] for g in groups if i < len(g)][: n - len(picked)]
        i += 1
    return picked


def preview_grid_png(landing: Path, accepted: pd.DataFrame, *, n: int = 64, tile: int = 48) -> bytes | None:
    paths = spread_sample(accepted, n)
    if not paths:
        return None
    images = np.stack([load_normalized(landing / p, resolution=tile, channels="RGB") for p in paths])
    return png_bytes(image_grid(images, nrow=min(8, len(paths))))
