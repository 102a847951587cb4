"""Jobs: named selections the sensor, the schedule, the CLI and the UI launch (one partition = one dataset)."""

import dagster as dg

from imagegen_pipeline.defs.captions import caption_embeddings
from imagegen_pipeline.defs.dcgan import dcgan_checkpoint
from imagegen_pipeline.defs.evaluation import evaluation_report, generator_champion
from imagegen_pipeline.defs.extractor import extractor_champion, feature_extractor, image_embeddings
from imagegen_pipeline.defs.gallery import sample_gallery
from imagegen_pipeline.defs.ingestion import image_shards, raw_images
from imagegen_pipeline.defs.prompts import prompt_gallery
from imagegen_pipeline.defs.partitions import dataset_partitions

INGEST = dg.AssetSelection.assets(raw_images, image_shards)
FEATURES = dg.AssetSelection.assets(feature_extractor, extractor_champion, image_embeddings)
TRAIN = dg.AssetSelection.assets(dcgan_checkpoint)
EVALUATE = dg.AssetSelection.assets(evaluation_report, generator_champion, sample_gallery)


def _job(name: str, selection: dg.AssetSelection, description: str):
    return dg.define_asset_job(name, selection=selection, partitions_def=dataset_partitions, description=description)


ingest_job = _job("ingest_job", INGEST,
                  "Validate a dataset's landing folder and write its tensor shards (one partition = one dataset).")
features_job = _job("features_job", FEATURES, "Fine-tune the ImageNet extractor on a dataset and embed every image.")
train_job = _job("train_job", TRAIN, "Train (or resume) the dataset's DCGAN and register its EMA generator.")
evaluate_job = _job("evaluate_job", EVALUATE, "Evaluate the latest generator, draw its gallery and promote it if it is better.")
retrain_job = _job("retrain_job", FEATURES | TRAIN | EVALUATE,
                   "Everything downstream of the shards: extractor, embeddings, DCGAN, evaluation, promotion.")
pipeline_job = _job("pipeline_job", INGEST | FEATURES | TRAIN | EVALUATE,
                    "The whole chain for one dataset: ingestion to a registered, evaluated generator.")
captions_job = _job("captions_job", dg.AssetSelection.assets(caption_embeddings),
                    "Encode every caption once with the offline sentence encoder (for text-conditioned training).")
text_job = dg.define_asset_job(
    "text_job", selection=dg.AssetSelection.assets(caption_embeddings, feature_extractor, extractor_champion,
                                                   image_embeddings, dcgan_checkpoint, evaluation_report,
                                                   generator_champion, prompt_gallery),
    partitions_def=dataset_partitions, config={"ops": {"dcgan_checkpoint": {"config": {"conditioning": "text"}}}},
    description="Text to image for a captioned dataset: captions, extractor, embeddings, a text-conditioned DCGAN, "
                "its evaluation (R-precision on held-out captions) and the prompt gallery. A launchpad config "
                "with its own `ops` section must set dcgan_checkpoint's conditioning: text again.")
