"""Asset checks on ingestion: nothing lost between landing folder, manifest and shards."""


import dagster as dg

from imagegen_pipeline.defs.ingestion import image_shards, raw_images
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.ingest import checks
from imagegen_pipeline.ingest.manifest import read_manifest
from imagegen_pipeline.ml.shard_reader import ShardReader
from imagegen_pipeline.paths import MANIFEST_FILE


def datasets_in_scope(context: dg.AssetCheckExecutionContext, storage: ImagegenStorage) -> list[str]:
    """The run's partition; or, for a check launched on its own (no partition), every ingested dataset."""
    if context.op_execution_context.has_partition_key:
        return [context.partition_key]
    root = storage.paths.data / "manifests"
    return sorted(d.name for d in root.iterdir() if (d / MANIFEST_FILE).is_file()) if root.is_dir() else []


def check_each(context, storage, fn) -> dg.AssetCheckResult:
    """Run `fn(dataset) -> (passed, details)` per dataset in scope; pass only if all pass."""
    results = {ds: fn(ds) for ds in datasets_in_scope(context, storage)}
    if len(results) == 1:
        [(passed, details)] = results.values()
        return dg.AssetCheckResult(passed=passed, metadata=details)
    failed = sorted(ds for ds, (ok, _) in results.items() if not ok)
    return dg.AssetCheckResult(passed=bool(results) and not failed, metadata={
        "datasets_checked": len(results), "failed": ", ".join(failed) or "none",
        **{f"{ds}: {k}": v for ds in failed for k, v in results[ds][1].items()}})


def _manifest(storage: ImagegenStorage, dataset: str):
    m = read_manifest(storage.paths.manifest(dataset))
    if m is None:
        raise dg.Failure(f"no manifest for {dataset!r}")
    return m


@dg.asset_check(asset=raw_images, blocking=True,
                description="Every file in the landing folder is accounted for in the manifest, once.")
def manifest_accounts_for_every_file(context: dg.AssetCheckExecutionContext,
                                     storage: ImagegenStorage) -> dg.AssetCheckResult:
    return check_each(context, storage, lambda ds: checks.manifest_covers_landing(
        storage.paths.raw(ds), _manifest(storage, ds)))


@dg.asset_check(asset=image_shards, blocking=True,
                description="Shard rows equal accepted manifest rows, with the same content hashes.")
def shard_rows_match_manifest(context: dg.AssetCheckExecutionContext,
                              storage: ImagegenStorage) -> dg.AssetCheckResult:
    return check_each(context, storage, lambda ds: checks.shards_match_manifest(
        _manifest(storage, ds), ShardReader(storage.paths.shards(ds))))


@dg.asset_check(asset=image_shards, blocking=True,
                description="Pixel widths, row counts, shapes and the [0, 1] range match description.json.")
def shard_pixels_match_description(context: dg.AssetCheckExecutionContext,
                                   storage: ImagegenStorage) -> dg.AssetCheckResult:
    return check_each(context, storage, lambda ds: checks.shards_match_description(
        ShardReader(storage.paths.shards(ds))))


ingestion_checks = [manifest_accounts_for_every_file, shard_rows_match_manifest, shard_pixels_match_description]
