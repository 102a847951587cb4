"""What every asset and check shares: the partition's dataset name (checked before any path is built from it)
and the datasets a check looks at."""


import dagster as dg

from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.paths import MANIFEST_FILE, validate_dataset_name


def dataset_of(context: dg.AssetExecutionContext) -> str:
    return validate_dataset_name(context.partition_key)


def datasets_in_scope(context: dg.AssetCheckExecutionContext, storage: ImagegenStorage) -> list[str]:
    """The run's partition; or, for a check launched on its own (no partition), every ingested dataset."""
    if context.op_execution_context.has_partition_key:
        return [context.partition_key]
    root = storage.paths.data / "manifests"
    return sorted(d.name for d in root.iterdir() if (d / MANIFEST_FILE).is_file()) if root.is_dir() else []


def check_each(context, storage, fn) -> dg.AssetCheckResult:
    """Run `fn(dataset) -> (passed, details)` per dataset in scope; pass only if all pass. A failing dataset's
    details["reason"] becomes the result's description: the line the UI and the CLI show."""
    results = {ds: fn(ds) for ds in datasets_in_scope(context, storage)}
    if len(results) == 1:
        [(passed, details)] = results.values()
        return dg.AssetCheckResult(passed=passed, metadata=details, description=details.get("reason"))
    failed = sorted(ds for ds, (ok, _) in results.items() if not ok)
    reasons = "; ".join(f"{ds}: {results[ds][1]['reason']}" for ds in failed if "reason" in results[ds][1])
    return dg.AssetCheckResult(passed=bool(results) and not failed, description=reasons or None, metadata={
        "datasets_checked": len(results), "failed": ", ".join(failed) or "none",
        **{f"{ds}: {k}": v for ds in failed for k, v in results[ds][1].items()}})
