"""Asset `sample_gallery`: a fixed-seed HTML gallery of the latest trained generator (per class, interpolations,
nearest training neighbours), one folder per registered version under reports/<dataset>/gallery/."""


import dagster as dg
from pydantic import Field

from imagegen_pipeline.defs.artifacts import DCGAN_CHECKPOINT, IMAGE_EMBEDDINGS
from imagegen_pipeline.defs.automation import RETRAIN_WHEN_DATA_CHANGES
from imagegen_pipeline.defs.common import dataset_of
from imagegen_pipeline.defs.metadata import materialized, stage_failures
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.stages.gallery import draw_gallery

GROUP = "evaluation"


class SampleGalleryConfig(dg.Config):
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda'.")
    seeds_per_class: int = Field(default=8, description="Samples per class grid (seeds 0..n-1, the same for every "
                                                        "class).")
    fixed_seed_count: int = Field(default=64, description="Images in the fixed-seed grid (seeds 0..n-1, labels "
                                                          "cycling over the classes): the grid to compare runs by.")
    interpolation_rows: int = Field(default=4, description="Latent interpolation strips, each within one class.")
    interpolation_steps: int = Field(default=8, description="Images per interpolation strip.")
    interpolation_mode: str = Field(default="slerp", description="'slerp' (spherical) or 'lerp' (straight line).")
    nn_samples: int = Field(default=16, description="Samples shown beside their nearest training image; 0 skips.")
    max_train_images: int | None = Field(default=20000, description="Cap on training images searched for "
                                                                    "neighbours (a fixed random subset); null = all.")


@dg.asset(automation_condition=RETRAIN_WHEN_DATA_CHANGES,
          partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN, group_name=GROUP,
          kinds={"pytorch", "html"}, deps=[DCGAN_CHECKPOINT, IMAGE_EMBEDDINGS],
          description="A fixed-seed HTML gallery of the latest generator: a grid per class, the fixed-seed grid, "
                      "latent interpolations and each sample beside its nearest training image, under "
                      "reports/<dataset>/gallery/v<version>/ (latest.json names the newest).")
def sample_gallery(context: dg.AssetExecutionContext, config: SampleGalleryConfig,
                   storage: ImagegenStorage) -> dg.MaterializeResult:
    with stage_failures():
        return materialized(draw_gallery(storage.paths, dataset_of(context), warn=context.log.warning,
                                         log=context.log.info, **config.model_dump()))


gallery_assets = [sample_gallery]
