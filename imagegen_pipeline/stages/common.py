"""What every stage reads the same way: a dataset's shards, a stamp of their content, and line plots."""

from __future__ import annotations

import hashlib
import io
import json

from imagegen_pipeline.ml.shard_reader import ShardReader
from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline.stages.outputs import StageFailed


def open_shards(paths: DataPaths, dataset: str) -> ShardReader:
    try:
        return ShardReader(paths.shards_location(dataset))  # a URI when $IMAGEGEN_SHARDS_URI is set
    except FileNotFoundError as exc:
        raise StageFailed(f"{dataset}: {exc}") from exc


def shards_stamp(reader: ShardReader) -> str:
    """The shards' content key: equal after re-ingesting the same files, so a killed pipeline run resumes its
    checkpoint and the schedule skips unchanged data. Shards written before the key existed fall back to the
    hash of description.json."""
    raw = reader.description_bytes
    return json.loads(raw).get("content_key") or hashlib.sha256(raw).hexdigest()[:16]


def curves_png(series: dict[str, list[tuple[float, float]]], *, title: str, xlabel: str) -> bytes:
    """Line plots of named (x, y) series, one figure; for loss and accuracy curves in metadata."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name, marker="o" if len(points) < 30 else None, markersize=3)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def png_to_array(png: bytes):
    """PNG bytes as an (H, W, 3) uint8 array, for MLflow's log_image."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
