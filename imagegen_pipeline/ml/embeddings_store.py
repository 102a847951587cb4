"""Embeddings on disk: one Parquet file per dataset (sha256, split, label, label_idx, embedding), written atomically.

The vector column is a fixed-size list of float32, so a reader gets an (N, D) array without parsing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imagegen_pipeline.atomic import atomic_path, write_json_atomic

EMBEDDINGS_FILE = "embeddings.parquet"
INFO_FILE = "embeddings.json"


def write_embeddings(out_dir: Path, parts: Iterable[dict], *, extractor: dict) -> Path:
    """`parts`: dicts of split, sha256 list, label list, label_idx (N,), embedding (N, D) float32."""
    tables = []
    for p in parts:
        emb = np.ascontiguousarray(p["embedding"], dtype=np.float32)
        n, d = emb.shape
        tables.append(pa.table({
            "sha256": pa.array(p["sha256"], pa.string()),
            "split": pa.array([p["split"]] * n, pa.string()),
            "label": pa.array(p["label"], pa.string()),
            "label_idx": pa.array(np.asarray(p["label_idx"], dtype=np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), d),
        }))
    table = pa.concat_tables(tables)
    out = Path(out_dir) / EMBEDDINGS_FILE
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    write_json_atomic(Path(out_dir) / INFO_FILE, {
        "rows": table.num_rows, "dim": table.schema.field("embedding").type.list_size,
        "extractor": {k: extractor.get(k) for k in ("registered_model", "registered_version", "shards",
                                                     "mlflow_run_id", "fine_tuned")}})
    return out


def read_embeddings(out_dir: Path, *, split: str | None = None) -> pd.DataFrame:
    """The embeddings table; `embedding` holds one float32 array per row."""
    table = pq.read_table(Path(out_dir) / EMBEDDINGS_FILE, filters=[("split", "=", split)] if split else None)
    return table.to_pandas()


def embedding_matrix(frame: pd.DataFrame) -> np.ndarray:
    """(N, D) float32 from the `embedding` column."""
    return np.stack(frame["embedding"].to_numpy()).astype(np.float32, copy=False) if len(frame) else np.zeros((0, 0), np.float32)


def rows_by_sha256(wanted: Sequence[str], table: Sequence[str]) -> np.ndarray:
    """For each content hash in `wanted`, its row in `table` (-1 where absent): the one way tables of a dataset
    (shards, embeddings, captions, samples' sources) are joined, whatever order each was written in."""
    where = {sha: i for i, sha in enumerate(table)}
    return np.array([where.get(sha, -1) for sha in wanted], dtype=np.int64)
