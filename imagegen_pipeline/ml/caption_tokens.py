"""Caption token states on disk, and the condition a text generator reads for a prompt.

`caption_embeddings` writes each distinct caption's MiniLM token states once (caption_tokens.parquet, float16,
STORED_TOKENS per caption, zero rows padding) beside the pooled vectors of captions.parquet. A token-conditioned
diffusion model (DiffusionConfig.text_tokens > 0) trains on and is evaluated with these; every other text model
reads the pooled vectors. `prompt_conditions` is the one place that turns prompts into what a model reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imagegen_pipeline.atomic import atomic_path

TOKENS_FILE = "caption_tokens.parquet"  # beside captions.parquet under data/embeddings/<dataset>/
STORED_TOKENS = 16  # per caption: an emoji name with its skin tone fits ("woman, light skin tone" is 9)


def write_caption_tokens(out_dir: str | Path, captions: Sequence[str], tokens: np.ndarray) -> Path:
    """captions (U,) distinct, tokens (U, L, D): one row per caption, the states as float16, atomically; L and D
    travel in the file's schema metadata."""
    tokens = np.ascontiguousarray(tokens, dtype=np.float16)
    u, length, dim = tokens.shape
    if len(captions) != u:
        raise ValueError(f"{len(captions)} captions for {u} token rows")
    table = pa.table({"caption": pa.array(list(captions), pa.string()),
                      "tokens": pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1)), length * dim)})
    table = table.replace_schema_metadata({b"tokens_per_caption": str(length).encode(), b"dim": str(dim).encode()})
    out = Path(out_dir) / TOKENS_FILE
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return out


@dataclass
class CaptionTokens:
    """Every distinct caption's token states: tokens float16 (U, L, D), row i for captions[i]."""

    captions: list[str]
    tokens: np.ndarray

    @classmethod
    def read(cls, out_dir: str | Path) -> CaptionTokens:
        f = Path(out_dir) / TOKENS_FILE
        if not f.is_file():
            raise FileNotFoundError(f"no {f}: materialize caption_embeddings (it writes the caption token states)")
        table = pq.read_table(f)
        meta = table.schema.metadata or {}
        length, dim = int(meta[b"tokens_per_caption"]), int(meta[b"dim"])
        flat = table.column("tokens").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return cls(table.column("caption").to_pylist(), flat.astype(np.float16, copy=False).reshape(-1, length, dim))

    def lookup(self, captions: Sequence[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """(float16 (N, max_tokens, D) with zero rows where a caption is unknown, bool (N,) which are known)."""
        if max_tokens > self.tokens.shape[1]:
            raise ValueError(f"the model reads {max_tokens} tokens per caption; {TOKENS_FILE} stores "
                             f"{self.tokens.shape[1]}: rematerialize caption_embeddings with more")
        index = {c: i for i, c in enumerate(self.captions)}
        rows = np.fromiter((index.get(c, -1) for c in captions), dtype=np.int64, count=len(captions))
        found = rows >= 0
        out = np.zeros((len(captions), max_tokens, self.tokens.shape[2]), np.float16)
        out[found] = self.tokens[rows[found], :max_tokens]
        return out, found


def reads_tokens(cfg) -> bool:
    """Whether a generator config reads token states (only the diffusion family has the field)."""
    return cfg.conditioning == "text" and getattr(cfg, "text_tokens", 0) > 0


def prompt_conditions(cfg, prompts: Sequence[str], *, encoder) -> np.ndarray:
    """What a text generator reads for each prompt: pooled vectors (P, D), or token states (P, L, D)."""
    prompts = [str(p) for p in prompts]
    if reads_tokens(cfg):
        return encoder.encode_tokens(prompts, max_tokens=cfg.text_tokens)
    return encoder.encode(prompts)
