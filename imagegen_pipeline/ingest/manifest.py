"""The manifest: one row per file in a landing folder, with its content hash, status and reason.

Status is `ok` (accepted), `duplicate` (valid, but the same bytes as an earlier path) or
`quarantined` (refused, with the reason). Files unchanged since the previous manifest
(same size and mtime) are not decoded again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from imagegen_pipeline.atomic import atomic_path
from imagegen_pipeline.datasets.landing import IMPORT_ERROR, is_sidecar, read_label_table, walk_files
from imagegen_pipeline.ingest import pixel_store
from imagegen_pipeline.ingest.parallel import chunked, ordered_map, resolve_workers
from imagegen_pipeline.ingest.validate import PixelSpec, ValidationConfig, inspect_chunk

MANIFEST_COLUMNS = ["path", "status", "reason", "sha256", "label", "caption", "attributes", "width", "height",
                    "mode", "format", "is_gray", "size_bytes", "mtime_ns", "valid", "validated_with"]
STATUSES = ("ok", "duplicate", "quarantined")
REFUSED_BY_IMPORTER = "refused by the importer: "  # reason prefix of rows whose labels.csv says import_error


class EmptyDataset(ValueError):
    """A landing folder with no files to ingest."""


@dataclass
class ManifestStats:
    files: int = 0
    decoded: int = 0  # files decoded in this run (new or changed)
    reused: int = 0  # rows carried over from the previous manifest unchanged
    stored: int = 0  # rows in the pixel store written by this scan (0 = none written)
    counts: dict = field(default_factory=dict)  # status -> rows


def list_landing_files(root: Path) -> list[str]:
    """Every non-sidecar entry under `root` (symlinks included, never followed), sorted, '/'-separated."""
    return sorted(rel for rel, _ in walk_files(root) if not is_sidecar(rel))


def _label_from_folder(rel: str) -> str | None:
    return rel.split("/", 1)[0] if "/" in rel else None


def validation_key(cfg: ValidationConfig) -> str:
    """The limits a row was judged under; a row is reused only under the same limits."""
    return json.dumps(asdict(cfg), sort_keys=True)


def build_manifest(root: Path, *, previous: pd.DataFrame | None = None, cfg: ValidationConfig | None = None,
                   workers: int = 0, chunk_size: int = 512, pixels: PixelSpec | None = None,
                   store: Path | None = None,
                   log: Callable[[str], None] = lambda _: None) -> tuple[pd.DataFrame, ManifestStats]:
    """Scan `root` and return the manifest (sorted by path) and what this scan did. With `pixels` and `store`,
    the same decode also writes every valid file's normalised pixels to `store` (see pixel_store.py)."""
    if not root.is_dir():
        raise EmptyDataset(f"landing folder {root} does not exist")
    rels = list_landing_files(root)
    if not rels:
        raise EmptyDataset(f"landing folder {root} has no files to ingest (drop images into it, sub-folder = class)")
    stats = ManifestStats(files=len(rels))
    cfg = cfg or ValidationConfig()
    settings = validation_key(cfg)
    reuse: dict[str, dict] = {}
    keep_pixels = pixels is not None and store is not None
    old_store = store if keep_pixels and pixel_store.store_spec(store) == pixels else None
    if previous is not None and len(previous) and (old_store is not None or not keep_pixels):
        prev = {r["path"]: r for r in previous.to_dict("records")}
        for rel in rels:
            if (old := prev.get(rel)) is None:
                continue
            try:
                st = (root / rel).lstat()
            except OSError:
                continue
            if (int(old["size_bytes"]) == st.st_size and int(old["mtime_ns"]) == st.st_mtime_ns
                    and old.get("validated_with") == settings  # other limits can change the verdict
                    and not str(old.get("reason") or "").startswith(REFUSED_BY_IMPORTER)):  # verdict not its own
                reuse[rel] = old
    todo = [r for r in rels if r not in reuse]
    stats.reused, stats.decoded = len(reuse), len(todo)
    log(f"{len(rels)} files: {len(reuse)} unchanged, {len(todo)} to decode")
    fn = partial(inspect_chunk, str(root), cfg=cfg, pixels=pixels if keep_pixels else None)
    decoded: dict[str, dict] = {}

    def decode() -> Iterator[dict[str, list]]:
        """Inspect the new files in order; keep their manifest rows, pass their pixels on to the store (one
        batch of columns per chunk)."""
        for rows in ordered_map(fn, chunked(todo, chunk_size), workers=resolve_workers(workers)):
            batch: dict[str, list] = {"path": [], "sha256": [], "mode": [], "pixels": []}
            for row in rows:
                px, mode = row.pop("_pixels", None), row.pop("_pixel_mode", None)
                decoded[row["path"]] = row
                if px is not None:
                    for name, value in zip(batch, (row["path"], row["sha256"], mode, px), strict=True):
                        batch[name].append(value)
            yield batch

    if keep_pixels:
        kept = {rel: old["sha256"] for rel, old in reuse.items() if old["valid"]}
        stats.stored = pixel_store.write_store(store, pixels, pixel_store.merged_batches(decode(), old_store, kept))
    else:
        for _ in decode():
            pass
    labels = read_label_table(root)
    records = []
    for rel in rels:
        row = dict(reuse.get(rel) or decoded[rel])
        meta = dict(labels.get(rel, {}))
        row["label"] = meta.pop("label", None) or _label_from_folder(rel)
        row["caption"] = meta.pop("caption", None)
        if (refused := meta.pop(IMPORT_ERROR, None)):  # the importer could not use it: never an accepted row
            row["valid"], row["reason"] = False, f"{REFUSED_BY_IMPORTER}{refused}"
        row["attributes"] = json.dumps(meta, sort_keys=True, ensure_ascii=False) if meta else None
        row["validated_with"] = settings
        records.append(row)
    df = pd.DataFrame.from_records(records)
    for col in MANIFEST_COLUMNS:
        if col not in df:
            df[col] = None
    df = df[MANIFEST_COLUMNS]
    df["valid"] = df["valid"].astype(bool)
    df = _mark_status(df)
    stats.counts = {s: int((df["status"] == s).sum()) for s in STATUSES}
    return df, stats


def _mark_status(df: pd.DataFrame) -> pd.DataFrame:
    """Quarantined if invalid; among valid rows the first path with a given sha256 is `ok`, the rest `duplicate`."""
    df = df.sort_values("path", kind="stable").reset_index(drop=True)
    df["status"] = "quarantined"
    valid = df["valid"]
    df.loc[valid, "status"] = "ok"
    df.loc[valid, "reason"] = ""
    first = df[valid].drop_duplicates("sha256", keep="first").set_index("sha256")["path"]
    dup = valid & df.duplicated("sha256", keep="first") & df["sha256"].notna()
    df.loc[dup, "status"] = "duplicate"
    df.loc[dup, "reason"] = "same content as " + df.loc[dup, "sha256"].map(first)
    return df


def read_manifest(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.is_file() else None


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
