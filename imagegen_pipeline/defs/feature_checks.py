"""Asset checks on the features stage: the extractor learned something, every image has one finite embedding."""

import dagster as dg

from imagegen_pipeline.defs.artifacts import FEATURE_EXTRACTOR, IMAGE_EMBEDDINGS
from imagegen_pipeline.defs.common import check_each
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.ml import quality_checks
from imagegen_pipeline.ml.embeddings_store import EMBEDDINGS_FILE, read_embeddings
from imagegen_pipeline.ml.shard_reader import ShardReader
from imagegen_pipeline.stages.artifacts import extractor_summary


def _accuracy(storage: ImagegenStorage, dataset: str) -> tuple[bool, dict]:
    summary = extractor_summary(storage.paths, dataset)
    if summary is None:
        return False, {"error": f"no extractor summary for {dataset}; materialize feature_extractor"}
    return quality_checks.accuracy_above_floor(summary, float(summary.get("min_val_accuracy", 0.5)))


def _embeddings(storage: ImagegenStorage, dataset: str):
    d = storage.paths.embeddings(dataset)
    if not (d / EMBEDDINGS_FILE).is_file():
        return None
    return read_embeddings(d)


@dg.asset_check(asset=FEATURE_EXTRACTOR, blocking=True,
                description="Validation accuracy of the fine-tuned extractor is at least the configured floor.")
def extractor_accuracy_above_floor(context: dg.AssetCheckExecutionContext,
                                   storage: ImagegenStorage) -> dg.AssetCheckResult:
    return check_each(context, storage, lambda ds: _accuracy(storage, ds))


def _one_per_image(storage: ImagegenStorage, ds: str) -> tuple[bool, dict]:
    frame = _embeddings(storage, ds)
    if frame is None:
        return False, {"error": "no embeddings; materialize image_embeddings"}
    reader = ShardReader(storage.paths.shards(ds))
    hashes = [h for split in reader.description["splits"] for h in reader.read_column(split, "sha256")]
    return quality_checks.one_embedding_per_image(frame, hashes)


def _finite(storage: ImagegenStorage, ds: str) -> tuple[bool, dict]:
    frame = _embeddings(storage, ds)
    return (False, {"error": "no embeddings"}) if frame is None else quality_checks.embeddings_finite(frame)


@dg.asset_check(asset=IMAGE_EMBEDDINGS, blocking=True,
                description="Exactly one embedding per accepted image (same sha256 set as the shards).")
def one_embedding_per_image(context: dg.AssetCheckExecutionContext, storage: ImagegenStorage) -> dg.AssetCheckResult:
    return check_each(context, storage, lambda ds: _one_per_image(storage, ds))


@dg.asset_check(asset=IMAGE_EMBEDDINGS, blocking=True, description="No NaN, inf or all-zero embedding.")
def embeddings_are_finite(context: dg.AssetCheckExecutionContext, storage: ImagegenStorage) -> dg.AssetCheckResult:
    return check_each(context, storage, lambda ds: _finite(storage, ds))


feature_checks = [extractor_accuracy_above_floor, one_embedding_per_image, embeddings_are_finite]
