"""Accepted images -> fixed-size uint8 tensors in Parquet shards, plus `description.json`.

`description.json` is written last and lists the shard files: it is the commit point, so
a reader never sees a mix of an old and a new shard set. Old shards are removed after it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from imagegen_pipeline import uri
from imagegen_pipeline.atomic import atomic_path, write_json_atomic
from imagegen_pipeline.ingest import pixel_store
from imagegen_pipeline.ingest.parallel import chunked, ordered_map, resolve_workers
from imagegen_pipeline.ingest.validate import load_chunk
from imagegen_pipeline.locks import exclusive_lock
from imagegen_pipeline.paths import DESCRIPTION_FILE

FORMAT_VERSION = 1
SPLITS = ("train", "val")


class NoAcceptedImages(ValueError):
    """Nothing to shard: every file was quarantined or a duplicate."""


@dataclass(frozen=True)
class ShardConfig:
    """How accepted images become tensors."""

    resolution: int  # output side length; images are centre-cropped to square, then resized
    channels: str  # "L" (1 channel) or "RGB" (3 channels)
    val_fraction: float = 0.1  # share of images in the val split, chosen by content hash (stable across runs)
    use_source_split: bool = True  # rows whose labels.csv names a source_split (official MNIST test -> val) keep it
    target_shard_mb: int = 64  # uncompressed pixel bytes per shard file
    workers: int = 0  # decoding processes; 0 = one per core
    chunk_size: int = 512  # images per worker task

    def __post_init__(self):
        if self.channels not in ("L", "RGB"):
            raise ValueError(f"channels must be 'L' or 'RGB', not {self.channels!r}")
        if not 4 <= self.resolution <= 1024:
            raise ValueError(f"resolution must be between 4 and 1024, not {self.resolution}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), not {self.val_fraction}")

    @property
    def num_channels(self) -> int:
        return 1 if self.channels == "L" else 3

    @property
    def image_bytes(self) -> int:
        return self.resolution * self.resolution * self.num_channels


def split_of(sha256: str, val_fraction: float) -> str:
    """Deterministic split from the content hash: the same image lands in the same split forever."""
    return "val" if int(sha256[:8], 16) / 2**32 < val_fraction else "train"


SOURCE_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "val"}


def source_split_of(attributes: str | None) -> str | None:
    """The split a dataset's own labels.csv declares for a row (column `source_split`), as train/val; None when
    the row declares none. Declared splits are kept only when some row is declared val/test. Keeping MNIST's
    official test images in val means the generator never trains on the images that published FIDs are
    measured against."""
    if not attributes or not isinstance(attributes, str):
        return None
    try:
        declared = json.loads(attributes).get("source_split")
    except (ValueError, AttributeError):
        return None
    return SOURCE_SPLITS.get(str(declared).strip().lower()) if declared else None


def _schema(image_bytes: int) -> pa.Schema:
    return pa.schema([
        ("pixels", pa.binary(image_bytes)),  # (H, W, C) uint8, row-major
        ("label_idx", pa.int32()),  # index into description.class_names; -1 = unlabelled
        ("label", pa.string()),
        ("caption", pa.string()),
        ("sha256", pa.string()),
        ("path", pa.string()),
    ])


class _SplitWriter:
    """Buffers rows of one split and flushes a shard file (atomically) every `rows_per_shard` rows."""

    def __init__(self, out_dir: Path, split: str, token: str, schema: pa.Schema, rows_per_shard: int):
        self.out_dir, self.split, self.token, self.schema = out_dir, split, token, schema
        self.rows_per_shard = rows_per_shard
        self.buf: dict[str, list] = {name: [] for name in schema.names}
        self.files: list[str] = []
        self.rows = 0

    def add(self, **row) -> None:
        for k, v in row.items():
            self.buf[k].append(v)
        if len(self.buf["pixels"]) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        n = len(self.buf["pixels"])
        if not n:
            return
        name = f"{self.split}-{self.token}-{len(self.files):05d}.parquet"
        table = pa.Table.from_pydict(self.buf, schema=self.schema)
        with atomic_path(self.out_dir / name) as tmp:
            pq.write_table(table, tmp, compression="zstd", compression_level=1, row_group_size=4096)
        self.files.append(name)
        self.rows += n
        self.buf = {k: [] for k in self.buf}


def _described_files(description_file: Path) -> set[str]:
    try:
        return {f for s in json.loads(description_file.read_text())["splits"].values() for f in s["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _strings_or_none(column: pd.Series) -> list[str | None]:
    """pandas' string dtype turns None back into NaN; Arrow wants None."""
    return [None if pd.isna(v) else str(v) for v in column]


LOCK_FILE = ".write.lock"


def write_shards(landing: Path, accepted: pd.DataFrame, out_dir: Path, cfg: ShardConfig, *,
                 pixels: Path | None = None, log: Callable[[str], None] = lambda _: None,
                 lock_timeout: float = 3600.0, mirror: str | None = None) -> dict:
    """Shard the `accepted` manifest rows; return the description written. Their pixels come from the
    validation pass's store (`pixels`, see pixel_store.py) when it covers them; otherwise each file is decoded
    again, and re-hashed first, so an edit made since validation is refused.

    Writers of one shard folder take turns (a cross-process lock; the loser waits up to `lock_timeout` s, then
    fails saying so). The previous generation's files stay until the next write, so a reader that opened the
    old description.json can still read its files while a new generation is written."""
    if accepted.empty:
        raise NoAcceptedImages(f"no accepted images in {landing}: every file was quarantined or a duplicate")
    with exclusive_lock(out_dir / LOCK_FILE, timeout=lock_timeout, what=f"the shard folder {out_dir}"):
        description = _write_shards(landing, accepted, out_dir, cfg, pixels, log=log)
        if mirror:
            mirror_shards(out_dir, description, mirror, log=log)
        return description


def mirror_shards(out_dir: Path, description: dict, dest: str, *, log: Callable[[str], None] = lambda _: None) -> None:
    """Copy a shard generation to `dest` (a URI, e.g. s3://bucket/shards/mnist) through pyarrow.fs: the Parquet files
    first, description.json last, so a reader there never sees a description whose files are not all there yet.
    Files the previous remote generation described stay (its readers keep theirs); older ones are removed."""
    fs, root = uri.resolve(dest)
    fs.create_dir(root, recursive=True)
    previous = set()
    try:
        previous = {f for s in json.loads(uri.read_bytes(uri.join(dest, DESCRIPTION_FILE)))["splits"].values()
                    for f in s["files"]}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        pass
    new = [f for s in description["splits"].values() for f in s["files"]]
    for name in new:
        uri.write_bytes(uri.join(dest, name), (out_dir / name).read_bytes())
    uri.write_bytes(uri.join(dest, DESCRIPTION_FILE), (out_dir / DESCRIPTION_FILE).read_bytes())
    keep = set(new) | previous
    for info in fs.get_file_info(pafs.FileSelector(root)):
        name = info.path.rsplit("/", 1)[-1]
        if name.endswith(".parquet") and name not in keep:
            fs.delete_file(info.path)
    log(f"mirrored {len(new)} shard files to {dest}")


def _write_shards(landing: Path, accepted: pd.DataFrame, out_dir: Path, cfg: ShardConfig, pixels: Path | None, *,
                  log: Callable[[str], None]) -> dict:
    accepted = accepted.sort_values("path", kind="stable")
    labels, captions = _strings_or_none(accepted["label"]), _strings_or_none(accepted["caption"])
    class_names = sorted({x for x in labels if x is not None})
    class_idx = {c: i for i, c in enumerate(class_names)}
    out_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    schema = _schema(cfg.image_bytes)
    rows_per_shard = max(1, cfg.target_shard_mb * 2**20 // cfg.image_bytes)
    writers = {s: _SplitWriter(out_dir, s, token, schema, rows_per_shard) for s in SPLITS}
    rels = accepted["path"].tolist()
    declared = ([source_split_of(a) for a in accepted["attributes"]]
                if cfg.use_source_split and "attributes" in accepted else [None] * len(rels))
    if "val" not in declared:  # e.g. a slice of MNIST's train files only: a val split by hash beats none at all
        declared = [None] * len(rels)
    splits = [d or split_of(sha, cfg.val_fraction) for d, sha in zip(declared, accepted["sha256"], strict=True)]
    meta = list(zip(rels, accepted["sha256"], labels, captions, splits, strict=True))
    content = hashlib.sha256(json.dumps([FORMAT_VERSION, cfg.resolution, cfg.channels, class_names]).encode())
    for _, sha, label, caption, split in meta:  # pixels are a function of (file, resolution, channels)
        content.update(f"{split}\t{sha}\t{label}\t{caption}\n".encode())
    items = [(m[0], m[1]) for m in meta]
    from_store = pixels is not None and pixel_store.covers(pixels, accepted, cfg.resolution, cfg.channels)
    if from_store:  # decoded once, by raw_images
        blobs = (b"".join(chunk) for chunk in chunked(
            pixel_store.stored_pixels(pixels, items, cfg.channels), cfg.chunk_size))
    else:
        fn = partial(load_chunk, str(landing), resolution=cfg.resolution, channels=cfg.channels)
        blobs = ordered_map(fn, chunked(items, cfg.chunk_size), workers=resolve_workers(cfg.workers))
    log("pixels from raw_images' validation pass" if from_store else "decoding every accepted file again "
        f"(no pixel store at {cfg.resolution} px {cfg.channels} covers them)")
    done = 0
    for chunk_meta, blob in zip(chunked(meta, cfg.chunk_size), blobs, strict=True):
        for i, (rel, sha, label, caption, split) in enumerate(chunk_meta):
            writers[split].add(
                pixels=blob[i * cfg.image_bytes:(i + 1) * cfg.image_bytes], label_idx=class_idx.get(label, -1),
                label=label, caption=caption, sha256=sha, path=rel)
        done += len(chunk_meta)
        if done % (cfg.chunk_size * 20) < cfg.chunk_size:
            log(f"sharded {done}/{len(rels)} images")
    for w in writers.values():
        w.flush()
    description = {
        "format_version": FORMAT_VERSION,
        # names the data, not the ingest: equal for a re-ingest of the same files (file names carry a random token)
        "content_key": content.hexdigest()[:16],
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "shape": [cfg.num_channels, cfg.resolution, cfg.resolution],
        "storage": "column 'pixels': fixed-size binary, uint8, (H, W, C) row-major",
        "dtype": "uint8",
        "to_float": "x / 255.0, giving values in [0, 1]",
        "channels": cfg.channels,
        "class_names": class_names,
        "num_rows": sum(w.rows for w in writers.values()),
        "splits": {s: {"rows": w.rows, "files": w.files} for s, w in writers.items()},
        "split_method": ("the dataset's source_split (test -> val), content hash for the rest"
                         if any(declared) else f"content hash, {cfg.val_fraction:.0%} val"),
        "config": asdict(cfg),
        "pixels_from": "raw_images validation pass" if from_store else "decoded again from the landing files",
    }
    previous = _described_files(out_dir / DESCRIPTION_FILE)
    write_json_atomic(out_dir / DESCRIPTION_FILE, description)
    keep = {f for w in writers.values() for f in w.files} | previous  # readers of the last generation keep theirs
    for old in out_dir.glob("*.parquet"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return description
