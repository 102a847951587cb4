"""Jobs: named selections the sensor, the schedule, the CLI and the UI launch (one partition = one dataset)."""

import dagster as dg

from imagegen_pipeline.defs.dcgan import dcgan_checkpoint
from imagegen_pipeline.defs.extractor import feature_extractor, image_embeddings
from imagegen_pipeline.defs.ingestion import image_shards, raw_images
from imagegen_pipeline.defs.partitions import dataset_partitions

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(raw_images, image_shards),
    partitions_def=dataset_partitions,
    description="Validate a dataset's landing folder and write its tensor shards (one partition = one dataset).",
)

features_job = dg.define_asset_job(
    "features_job",
    selection=dg.AssetSelection.assets(feature_extractor, image_embeddings),
    partitions_def=dataset_partitions,
    description="Fine-tune the ImageNet extractor on a dataset and embed every image.",
)

train_job = dg.define_asset_job(
    "train_job",
    selection=dg.AssetSelection.assets(dcgan_checkpoint),
    partitions_def=dataset_partitions,
    description="Train (or resume) the dataset's DCGAN and register its EMA generator.",
)
