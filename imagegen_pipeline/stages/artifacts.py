"""What the stages leave for each other under data/models/<dataset>/: the file names several stages read, and
the loaders for them. Every stage imports these from here, never from another stage."""

from __future__ import annotations

import json

from imagegen_pipeline.ml import dcgan as gan
from imagegen_pipeline.ml import extractor as features
from imagegen_pipeline.ml.dcgan.export import WEIGHTS_FILE as GENERATOR_FILE  # the latest EMA generator
from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline.stages.outputs import StageFailed

EXTRACTOR_FILE = "extractor.safetensors"  # feature_extractor: weights + metadata
EXTRACTOR_SUMMARY = "extractor_summary.json"  # feature_extractor: what the run measured; its check reads it
GENERATOR_SUMMARY = "generator_summary.json"  # dcgan_checkpoint: registered name/version, run, shards, steps
EXTRACTOR_VERSION_TAG = "imagegen.extractor_version"  # on a generator's run and version: the pinned judge
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # caption_embeddings' sentence encoder
FAMILY_TAG = "imagegen.family"  # on every registered generator version: "dcgan" or "vae"

__all__ = ["ENCODER_NAME", "EXTRACTOR_FILE", "EXTRACTOR_SUMMARY", "EXTRACTOR_VERSION_TAG", "FAMILY_TAG",
           "GENERATOR_FILE", "GENERATOR_SUMMARY", "extractor_summary", "fine_tuned_extractor", "generator_summary",
           "trained_generator"]


def generator_summary(paths: DataPaths, dataset: str) -> dict:
    """What the last dcgan_checkpoint materialization registered (name, version, run, shards, steps)."""
    f = paths.models(dataset) / GENERATOR_SUMMARY
    if not f.is_file():
        raise StageFailed(f"{dataset}: no trained generator; materialize dcgan_checkpoint first")
    return json.loads(f.read_text())


def trained_generator(paths: DataPaths, dataset: str, *, device) -> tuple[dict, gan.Generator, gan.DCGANConfig]:
    """The latest trained EMA generator of a dataset (the local export) and its summary."""
    summary = generator_summary(paths, dataset)
    if not (paths.models(dataset) / GENERATOR_FILE).is_file():
        raise StageFailed(f"{dataset}: no trained generator; materialize dcgan_checkpoint first")
    generator, cfg = gan.load_generator(paths.models(dataset) / GENERATOR_FILE, device=device)
    return summary, generator, cfg


def fine_tuned_extractor(paths: DataPaths, dataset: str, *, device) -> features.ExtractorNet | None:
    """The dataset's extractor in eval mode, or None when feature_extractor was never materialized."""
    f = paths.models(dataset) / EXTRACTOR_FILE
    return features.load_extractor(f, device=device)[0] if f.is_file() else None


def extractor_summary(paths: DataPaths, dataset: str) -> dict | None:
    """What the last feature_extractor materialization measured and registered; None before the first."""
    f = paths.models(dataset) / EXTRACTOR_SUMMARY
    return json.loads(f.read_text()) if f.is_file() else None
