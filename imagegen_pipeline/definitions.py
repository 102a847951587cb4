"""The one `Definitions` of the code location: assets, checks, jobs, sensors and resources, listed by hand."""

import dagster as dg

from imagegen_pipeline.defs.checks import ingestion_checks
from imagegen_pipeline.defs.ingestion import image_shards, raw_images
from imagegen_pipeline.defs.jobs import ingest_job
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.defs.sensors import landing_sensor

defs = dg.Definitions(
    assets=[raw_images, image_shards],
    asset_checks=ingestion_checks,
    jobs=[ingest_job],
    sensors=[landing_sensor],
    resources={"storage": ImagegenStorage()},
)
