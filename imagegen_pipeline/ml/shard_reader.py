"""Read the Parquet tensor shards as uint8 torch tensors, whole or streamed; map pixels to [0, 1].

Pixels stay uint8 until the last moment (4x less memory than float); `to_float` is the one
place that defines how they map to [0, 1].
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from imagegen_pipeline import uri
from imagegen_pipeline.paths import DESCRIPTION_FILE


class CorruptShard(RuntimeError):
    """A shard file listed in description.json that cannot be read (truncated, overwritten, missing)."""


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Arrow's and the OS's errors on one shard file, as one error that names it and the way out."""
    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        raise CorruptShard(f"shard file {path} cannot be read ({str(exc)[:200]}); materialize image_shards for "
                           "this dataset again (it rebuilds every shard from the manifest; the landing files are "
                           "not touched)") from exc


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1]."""
    return images_uint8.to(torch.float32).div_(255.0)


class ShardReader:
    """One dataset's shards, as described by its `description.json`: a folder, or a URI (s3://bucket/shards/mnist)
    read through pyarrow.fs."""

    def __init__(self, shard_dir: str | Path):
        self.dir = shard_dir if uri.is_uri(shard_dir) else Path(shard_dir)
        try:
            self.description_bytes = uri.read_bytes(uri.join(self.dir, DESCRIPTION_FILE))
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(f"no {DESCRIPTION_FILE} in {self.dir}: materialize image_shards first") from None
        self.description = json.loads(self.description_bytes)
        self.shape = tuple(self.description["shape"])  # (C, H, W)
        self.class_names: list[str] = self.description["class_names"]

    def files(self, split: str) -> list:
        """The split's shard files: Paths, or URIs for shards behind one."""
        if split not in self.description["splits"]:
            raise KeyError(f"unknown split {split!r}; have {sorted(self.description['splits'])}")
        return [uri.join(self.dir, name) for name in self.description["splits"][split]["files"]]

    def num_rows(self, split: str) -> int:
        return int(self.description["splits"][split]["rows"])

    def _to_tensor(self, pixels_column) -> torch.Tensor:
        c, h, w = self.shape
        chunks = [np.frombuffer(chunk.buffers()[1], dtype=np.uint8, count=len(chunk) * c * h * w,
                                offset=chunk.offset * c * h * w) for chunk in pixels_column.chunks]
        flat = np.concatenate(chunks) if len(chunks) != 1 else chunks[0].copy()
        return torch.from_numpy(flat).view(-1, h, w, c).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)

    def iter_batches(self, split: str, *, columns: tuple[str, ...] = ("label_idx",)) -> Iterator[dict]:
        """Stream row groups: {'images': uint8 (N, C, H, W), 'label_idx': int64 (N,), ...}."""
        for f in self.files(split):
            with _reading(f):
                pf = pq.ParquetFile(uri.open_input_file(f))
                groups = [pf.read_row_group(i, columns=["pixels", *columns]) for i in range(pf.num_row_groups)]
            for t in groups:
                out = {"images": self._to_tensor(t.column("pixels"))}
                for col in columns:
                    values = t.column(col).to_pylist()
                    out[col] = torch.tensor(values, dtype=torch.int64) if col == "label_idx" else values
                yield out

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split: uint8 images (N, C, H, W) and int64 labels (N,)."""
        c, h, w = self.shape
        n = self.num_rows(split)
        images = torch.empty((n, c, h, w), dtype=torch.uint8)
        labels = torch.empty((n,), dtype=torch.int64)
        i = 0
        for batch in self.iter_batches(split):
            k = len(batch["images"])
            images[i:i + k], labels[i:i + k] = batch["images"], batch["label_idx"]
            i += k
        return images, labels

    def read_column(self, split: str, column: str) -> list:
        values = []
        for f in self.files(split):
            with _reading(f):
                values += pq.read_table(uri.open_input_file(f), columns=[column]).column(column).to_pylist()
        return values
