"""The one `Definitions` of the code location: assets, checks, jobs, sensors and resources, by hand."""

import os

import dagster as dg

from imagegen_pipeline.defs.automation import retrain_when_data_changes
from imagegen_pipeline.defs.captions import caption_assets
from imagegen_pipeline.defs.checks import ingestion_checks
from imagegen_pipeline.defs.dcgan import dcgan_checkpoint
from imagegen_pipeline.defs.evaluation import evaluation_assets
from imagegen_pipeline.defs.extractor import extractor_champion, feature_extractor, image_embeddings
from imagegen_pipeline.defs.feature_checks import feature_checks
from imagegen_pipeline.defs.gallery import gallery_assets
from imagegen_pipeline.defs.ingestion import image_shards, raw_images
from imagegen_pipeline.defs.jobs import (captions_job, evaluate_job, features_job, ingest_job, pipeline_job, retrain_job,
                                        text_job, train_job)
from imagegen_pipeline.defs.prompts import prompt_assets
from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker, TrainingLauncher
from imagegen_pipeline.defs.dead_runs import dead_run_sensor
from imagegen_pipeline.defs.sensors import landing_sensor

defs = dg.Definitions(
    assets=[raw_images, image_shards, feature_extractor, extractor_champion, image_embeddings, dcgan_checkpoint,
            *evaluation_assets, *gallery_assets, *caption_assets, *prompt_assets],
    asset_checks=[*ingestion_checks, *feature_checks],
    jobs=[ingest_job, features_job, captions_job, train_job, evaluate_job, retrain_job, pipeline_job, text_job],
    sensors=[landing_sensor, dead_run_sensor, retrain_when_data_changes],
    # configuration, not code paths: $IMAGEGEN_HOME / $IMAGEGEN_TRACKING_URI / $IMAGEGEN_TRAINING (docs/scaling-out.md)
    resources={"storage": ImagegenStorage(), "mlflow_tracker": MlflowTracker(),
               "training": TrainingLauncher(mode=os.environ.get("IMAGEGEN_TRAINING", "in_process"),
                                            nproc_per_node=int(os.environ.get("IMAGEGEN_TRAINING_PROCS", "1")),
                                            image=os.environ.get("IMAGEGEN_TRAINING_IMAGE", ""))},
)
