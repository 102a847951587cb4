"""Assets `feature_extractor` and `image_embeddings`: ImageNet MobileNetV2 fine-tuned per dataset, then every
accepted image described as a 1280-d vector. The work is in `stages.extractor`; the defaults are
`ExtractorConfig`'s."""


import dagster as dg
from pydantic import Field

from imagegen_pipeline.defs.artifacts import FEATURE_EXTRACTOR, IMAGE_SHARDS
from imagegen_pipeline.defs.automation import RETRAIN_WHEN_DATA_CHANGES
from imagegen_pipeline.defs.common import dataset_of
from imagegen_pipeline.defs.metadata import materialized, stage_failures
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker
from imagegen_pipeline.ml.extractor import ExtractorConfig
from imagegen_pipeline.stages.extractor import embed_dataset, promote_extractor, train_feature_extractor

GROUP = "features"
CORE = ExtractorConfig()  # the defaults: one source, checked by test_config_defaults


class FeatureExtractorConfig(dg.Config):
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda'.")
    input_size: int = Field(default=CORE.input_size, description="Images are resized to this side for MobileNetV2 "
                                                                 "(96+ on a GPU).")
    batch_size: int = Field(default=CORE.batch_size, description="Training images per step.")
    head_epochs: int = Field(default=CORE.head_epochs, description="Phase 1: epochs of a new head on the frozen "
                                                                   "backbone (0 = skip).")
    finetune_epochs: int = Field(default=CORE.finetune_epochs, description="Phase 2: epochs with the top blocks "
                                                                           "unfrozen (one-cycle LR).")
    unfreeze_blocks: int = Field(default=CORE.unfreeze_blocks, description="Backbone blocks (from the top) unfrozen "
                                                                           "in phase 2; 19 = all of MobileNetV2.")
    max_train_images: int | None = Field(default=CORE.max_train_images, description="Cap on labelled training "
                                         "images; null = all (the default keeps a CPU run near a minute).")
    max_val_images: int | None = Field(default=CORE.max_val_images, description="Cap on validation images; "
                                                                                "null = all.")
    train_baseline: bool = Field(default=CORE.train_baseline, description="Also train from scratch with the same "
                                 "budget, to measure what transfer bought (doubles the time).")
    seed: int = Field(default=CORE.seed, description="Seed for init, shuffling and augmentation.")
    allow_download: bool = Field(default=False, description="Let torchvision download ImageNet weights if no "
                                                            "local copy is found (needs internet).")
    min_val_accuracy: float = Field(default=0.5, description="Asset check floor for validation accuracy.")

    def to_core(self) -> ExtractorConfig:
        fields = ExtractorConfig.__dataclass_fields__
        return ExtractorConfig(**{k: v for k, v in self.model_dump().items() if k in fields})


@dg.asset(automation_condition=RETRAIN_WHEN_DATA_CHANGES,
          partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN,
          group_name=GROUP, kinds={"pytorch", "mlflow"}, deps=[IMAGE_SHARDS],
          pool="gpu",
          description="MobileNetV2 with ImageNet weights, fine-tuned on the dataset's labels (an optional "
                      "frozen-backbone head, then the whole net, one-cycle); an optional from-scratch baseline "
                      "shows what transfer bought. Registered in MLflow as imagegen-extractor-<dataset>.")
def feature_extractor(context: dg.AssetExecutionContext, config: FeatureExtractorConfig, storage: ImagegenStorage,
                      mlflow_tracker: MlflowTracker) -> dg.MaterializeResult:
    with stage_failures():
        return materialized(train_feature_extractor(
            storage.paths, dataset_of(context), config.to_core(), device=config.device,
            allow_download=config.allow_download, min_val_accuracy=config.min_val_accuracy,
            tracker=mlflow_tracker.open(storage.paths), run_tag=context.run_id, log=context.log.info))


@dg.asset(automation_condition=RETRAIN_WHEN_DATA_CHANGES,
          partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN, group_name=GROUP,
          kinds={"mlflow"}, deps=[FEATURE_EXTRACTOR],
          description="The registry alias `champion` of imagegen-extractor-<dataset>: moved to the version "
                      "feature_extractor registered only after its blocking check (extractor_accuracy_above_floor) "
                      "passed, and only if its val accuracy is not below the champion's. Each materialization "
                      "records the decision and why.")
def extractor_champion(context: dg.AssetExecutionContext, storage: ImagegenStorage,
                       mlflow_tracker: MlflowTracker) -> dg.MaterializeResult:
    with stage_failures():
        return materialized(promote_extractor(storage.paths, dataset_of(context),
                                              tracker=mlflow_tracker.open(storage.paths), log=context.log.info))


class ImageEmbeddingsConfig(dg.Config):
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'.")
    batch_size: int | None = Field(default=CORE.embed_batch_size, description="Images per forward pass; null = the "
                                   "device's default (32 on CPU, 256 on CUDA).")
    near_duplicate_cosine: float = Field(default=0.995, description="Pairs of different files whose embeddings "
                                                                    "have at least this cosine are reported.")


@dg.asset(automation_condition=RETRAIN_WHEN_DATA_CHANGES,
          partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN,
          group_name=GROUP, kinds={"pytorch", "parquet"},
          deps=[FEATURE_EXTRACTOR, IMAGE_SHARDS],
          description="The fine-tuned extractor's 1280-d embedding of every accepted image, as Parquet under "
                      "data/embeddings/<dataset>/ (sha256, split, label, vector), with a 2-D map and near-duplicates.")
def image_embeddings(context: dg.AssetExecutionContext, config: ImageEmbeddingsConfig,
                     storage: ImagegenStorage) -> dg.MaterializeResult:
    with stage_failures():
        return materialized(embed_dataset(storage.paths, dataset_of(context), device=config.device,
                                          batch_size=config.batch_size,
                                          near_duplicate_cosine=config.near_duplicate_cosine, log=context.log.info))
