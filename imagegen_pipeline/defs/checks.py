"""Asset checks on ingestion: nothing lost between landing folder, manifest and shards."""


import dagster as dg

from imagegen_pipeline.defs.artifacts import IMAGE_SHARDS, RAW_IMAGES
from imagegen_pipeline.defs.common import check_each
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.ingest import checks
from imagegen_pipeline.ingest.manifest import read_manifest
from imagegen_pipeline.ml.shard_reader import ShardReader


def _manifest(storage: ImagegenStorage, dataset: str):
    m = read_manifest(storage.paths.manifest(dataset))
    if m is None:
        raise dg.Failure(f"no manifest for {dataset!r}")
    return m


@dg.asset_check(asset=RAW_IMAGES, blocking=True,
                description="Every file in the landing folder is accounted for in the manifest, once.")
def manifest_accounts_for_every_file(context: dg.AssetCheckExecutionContext,
                                     storage: ImagegenStorage) -> dg.AssetCheckResult:
    return check_each(context, storage, lambda ds: checks.manifest_covers_landing(
        storage.paths.raw(ds), _manifest(storage, ds)))


@dg.asset_check(asset=IMAGE_SHARDS, blocking=True,
                description="Shard rows equal accepted manifest rows, with the same content hashes.")
def shard_rows_match_manifest(context: dg.AssetCheckExecutionContext,
                              storage: ImagegenStorage) -> dg.AssetCheckResult:
    return check_each(context, storage, lambda ds: checks.shards_match_manifest(
        _manifest(storage, ds), ShardReader(storage.paths.shards(ds))))


@dg.asset_check(asset=IMAGE_SHARDS, blocking=True,
                description="Pixel widths, row counts, shapes and the [0, 1] range match description.json.")
def shard_pixels_match_description(context: dg.AssetCheckExecutionContext,
                                   storage: ImagegenStorage) -> dg.AssetCheckResult:
    return check_each(context, storage, lambda ds: checks.shards_match_description(
        ShardReader(storage.paths.shards(ds))))


ingestion_checks = [manifest_accounts_for_every_file, shard_rows_match_manifest, shard_pixels_match_description]
