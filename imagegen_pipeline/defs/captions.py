"""Asset `caption_embeddings`: every captioned image's caption as a MiniLM sentence vector, for text-conditioned
training and for scoring generated images against a prompt."""


import dagster as dg
from pydantic import Field

from imagegen_pipeline.defs.artifacts import IMAGE_SHARDS
from imagegen_pipeline.defs.common import dataset_of
from imagegen_pipeline.defs.metadata import materialized, stage_failures
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.stages.captions import embed_captions

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
    with stage_failures():
        return materialized(embed_captions(storage.paths, dataset_of(context), device=config.device,
                                           batch_size=config.batch_size, log=context.log.info))


caption_assets = [caption_embeddings]
