"""What the stages leave for each other under data/models/<dataset>/: the file names several assets read and the
loaders for them. Asset modules import these from here, never from another asset module; an asset names the
assets it depends on by key (`deps=[...]` below), so no asset module imports another."""

import json

import dagster as dg

from imagegen_pipeline.ml import dcgan as gan
from imagegen_pipeline.ml import extractor as features
from imagegen_pipeline.ml.dcgan.export import WEIGHTS_FILE as GENERATOR_FILE  # the latest EMA generator
from imagegen_pipeline.paths import DataPaths

EXTRACTOR_FILE = "extractor.safetensors"  # feature_extractor: weights + metadata
EXTRACTOR_SUMMARY = "extractor_summary.json"  # feature_extractor: what the run measured; its check reads it
GENERATOR_SUMMARY = "generator_summary.json"  # dcgan_checkpoint: registered name/version, run, shards, steps
EXTRACTOR_VERSION_TAG = "imagegen.extractor_version"  # on a generator's run and version: the pinned judge
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # caption_embeddings' sentence encoder

# Upstream assets, by key.
IMAGE_SHARDS = dg.AssetKey("image_shards")
FEATURE_EXTRACTOR, IMAGE_EMBEDDINGS = dg.AssetKey("feature_extractor"), dg.AssetKey("image_embeddings")
CAPTION_EMBEDDINGS, DCGAN_CHECKPOINT = dg.AssetKey("caption_embeddings"), dg.AssetKey("dcgan_checkpoint")


def generator_summary(paths: DataPaths, dataset: str) -> dict:
    """What the last dcgan_checkpoint materialization registered (name, version, run, shards, steps)."""
    f = paths.models(dataset) / GENERATOR_SUMMARY
    if not f.is_file():
        raise dg.Failure(f"{dataset}: no trained generator; materialize dcgan_checkpoint first")
    return json.loads(f.read_text())


def trained_generator(paths: DataPaths, dataset: str, *, device) -> tuple[dict, gan.Generator, gan.DCGANConfig]:
    """The latest trained EMA generator of a dataset (the local export) and its summary."""
    summary = generator_summary(paths, dataset)
    if not (paths.models(dataset) / GENERATOR_FILE).is_file():
        raise dg.Failure(f"{dataset}: no trained generator; materialize dcgan_checkpoint first")
    generator, cfg = gan.load_generator(paths.models(dataset) / GENERATOR_FILE, device=device)
    return summary, generator, cfg


def fine_tuned_extractor(paths: DataPaths, dataset: str, *, device) -> features.ExtractorNet | None:
    """The dataset's extractor in eval mode, or None when feature_extractor was never materialized."""
    f = paths.models(dataset) / EXTRACTOR_FILE
    return features.load_extractor(f, device=device)[0] if f.is_file() else None
