"""Pixels kept from the validation pass, so that image_shards never decodes a landing file a second time.

raw_images hashes, validates and resizes each new file from one read and one decode, and streams the result
here: `pixels.parquet` beside the manifest, one row per valid file, in path order (the manifest's order). The
pixels are a function of the validated bytes, so a file edited after validation cannot reach the shards
through this store. image_shards copies pixels from it when it covers every accepted row at the shards'
resolution and channels; otherwise (another resolution asked for, an older store) it decodes again.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imagegen_pipeline.atomic import atomic_path
from imagegen_pipeline.ingest.validate import PixelSpec

PIXELS_FILE = "pixels.parquet"
SCHEMA = pa.schema([("path", pa.string()), ("sha256", pa.string()), ("mode", pa.string()), ("pixels", pa.binary())])
BATCH_ROWS = 4096


def store_path(manifest_path: Path) -> Path:
    return manifest_path.with_name(PIXELS_FILE)


def _spec_metadata(spec: PixelSpec) -> dict[bytes, bytes]:
    return {b"resolution": str(spec.resolution).encode(), b"channels": spec.channels.encode()}


def store_spec(path: Path) -> PixelSpec | None:
    """The spec a store was written with, or None when there is no readable store."""
    try:
        meta = pq.read_schema(path).metadata or {}
        return PixelSpec(int(meta[b"resolution"]), meta[b"channels"].decode())
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def iter_rows(path: Path, columns: list[str] | None = None) -> Iterator[dict]:
    """The store's rows, in path order, a batch at a time (memory bounded by BATCH_ROWS)."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns):
        yield from batch.to_pylist()


def write_store(path: Path, spec: PixelSpec, batches: Iterable[dict[str, list]]) -> int:
    """Stream `batches` (path-sorted columns path, sha256, mode, pixels) into a new store, atomically."""
    n = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, SCHEMA.with_metadata(_spec_metadata(spec)), compression="zstd",
                              compression_level=1) as writer:
            for batch in batches:
                if batch["path"]:
                    writer.write_table(pa.Table.from_pydict(batch, schema=SCHEMA))
                    n += len(batch["path"])
    return n


def merged_batches(new: Iterable[dict[str, list]], previous: Path | None,
                   keep: dict[str, str]) -> Iterator[dict[str, list]]:
    """The new store's batches: freshly decoded rows merged, in path order, with the previous store's rows for
    the files reused unchanged (`keep`: path -> sha256). Nothing kept: the new batches pass through as they are."""
    if previous is None or not keep:
        yield from new
        return
    old = (r for r in iter_rows(previous) if keep.get(r["path"]) == r["sha256"])
    fresh = (dict(zip(b, row, strict=True)) for b in new for row in zip(*b.values(), strict=True))
    rows = heapq.merge(fresh, old, key=lambda r: r["path"])
    while chunk := list(itertools.islice(rows, BATCH_ROWS)):
        yield {name: [r[name] for r in chunk] for name in SCHEMA.names}


def _usable(mode: str, channels: str) -> bool:
    return mode == channels or (mode == "L" and channels == "RGB")  # L -> RGB repeats the band, exactly


def covers(path: Path, accepted: pd.DataFrame, resolution: int, channels: str) -> bool:
    """True when the store holds every accepted (path, sha256) at this resolution in a usable mode."""
    spec = store_spec(path)
    if spec is None or spec.resolution != resolution:
        return False
    stored = {r["path"]: (r["sha256"], r["mode"]) for r in iter_rows(path, ["path", "sha256", "mode"])}
    for rel, sha in zip(accepted["path"], accepted["sha256"], strict=True):
        got = stored.get(rel)
        if got is None or got[0] != sha or not _usable(got[1], channels):
            return False
    return True


class StoreChanged(RuntimeError):
    """The pixel store was rewritten (a concurrent raw_images run) while image_shards read it."""


def stored_pixels(path: Path, wanted: Iterable[tuple[str, str]], channels: str) -> Iterator[bytes]:
    """Pixels of the `wanted` (path, sha256) pairs (path-sorted; check `covers` first), in order, as `channels`."""
    rows = iter_rows(path)
    for rel, sha in wanted:
        row = next(rows, None)
        while row is not None and row["path"] < rel:
            row = next(rows, None)
        if row is None or row["path"] != rel or row["sha256"] != sha:
            raise StoreChanged(f"{path} no longer holds the validated pixels of {rel!r} (raw_images ran again "
                               "meanwhile); materialize image_shards again")
        px = row["pixels"]
        if row["mode"] == "L" and channels == "RGB":
            px = np.repeat(np.frombuffer(px, np.uint8), 3).tobytes()
        yield px
