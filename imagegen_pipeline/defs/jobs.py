"""Jobs: named selections the sensor, the CLI and the UI launch."""

import dagster as dg

from imagegen_pipeline.defs.ingestion import image_shards, raw_images
from imagegen_pipeline.defs.partitions import dataset_partitions

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(raw_images, image_shards),
    partitions_def=dataset_partitions,
    description="Validate a dataset's landing folder and write its tensor shards (one partition = one dataset).",
)
