"""Plain consistency checks between the landing folder, the manifest and the shards.

Each returns (passed, details) so the Dagster checks stay one-liners and tests can call them directly.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from imagegen_pipeline.ingest.manifest import list_landing_files
from imagegen_pipeline.ml.shard_reader import ShardReader, to_float


def manifest_covers_landing(landing: Path, manifest: pd.DataFrame) -> tuple[bool, dict]:
    """Every file in the landing folder has exactly one manifest row, and no row names a missing file."""
    on_disk = set(list_landing_files(landing))
    listed = set(manifest["path"])
    missing, extra = sorted(on_disk - listed), sorted(listed - on_disk)
    dup_rows = int(manifest["path"].duplicated().sum())
    return not (missing or extra or dup_rows), {
        "files_on_disk": len(on_disk), "manifest_rows": len(manifest), "unlisted_files": len(missing),
        "rows_without_file": len(extra), "duplicate_rows": dup_rows, "examples": ", ".join((missing + extra)[:5])}


def shards_match_manifest(manifest: pd.DataFrame, reader: ShardReader) -> tuple[bool, dict]:
    """The shards hold exactly the accepted images: same count, same content hashes."""
    accepted = set(manifest.loc[manifest["status"] == "ok", "sha256"])
    in_shards = [s for split in reader.description["splits"] for s in reader.read_column(split, "sha256")]
    ok = len(in_shards) == len(accepted) and set(in_shards) == accepted
    return ok, {"accepted_rows": len(accepted), "shard_rows": len(in_shards),
                "missing_from_shards": len(accepted - set(in_shards)), "not_in_manifest": len(set(in_shards) - accepted)}


def shards_match_description(reader: ShardReader) -> tuple[bool, dict]:
    """Every shard file's pixel width, row count and decoded range agree with description.json."""
    c, h, w = reader.shape
    problems = []
    for split, info in reader.description["splits"].items():
        rows = 0
        for f in reader.files(split):
            if not f.is_file():
                problems.append(f"missing file {f.name}")
                continue
            pf = pq.ParquetFile(f)
            width = pf.schema_arrow.field("pixels").type.byte_width
            if width != c * h * w:
                problems.append(f"{f.name}: {width} bytes per image, expected {c * h * w}")
            rows += pf.metadata.num_rows
        if rows != info["rows"]:
            problems.append(f"{split}: {rows} rows in files, description says {info['rows']}")
    if not problems:
        for split in reader.description["splits"]:
            if reader.num_rows(split):
                x = to_float(next(reader.iter_batches(split))["images"])
                if tuple(x.shape[1:]) != (c, h, w) or float(x.min()) < 0.0 or float(x.max()) > 1.0:
                    problems.append(f"{split}: decoded shape {tuple(x.shape[1:])}, range "
                                    f"[{float(x.min())}, {float(x.max())}]")
    return not problems, {"shape_chw": str((c, h, w)), "problems": "; ".join(problems[:10]) or "none"}
