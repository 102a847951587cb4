"""A nightly schedule that retrains only the datasets whose shards changed since their generator was trained."""

import json

import dagster as dg

from imagegen_pipeline.defs.common import shards_stamp
from imagegen_pipeline.defs.artifacts import GENERATOR_SUMMARY
from imagegen_pipeline.defs.jobs import retrain_job
from imagegen_pipeline.defs.partitions import dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.ml.shard_reader import DESCRIPTION_FILE, ShardReader


def stale_datasets(storage: ImagegenStorage, datasets: list[str]) -> dict[str, str]:
    """dataset -> current shards stamp, for datasets whose generator was trained on other shards (or never)."""
    paths = storage.paths
    stale = {}
    for ds in datasets:
        if not (paths.shards(ds) / DESCRIPTION_FILE).is_file():
            continue
        stamp = shards_stamp(ShardReader(paths.shards(ds)))
        summary = paths.models(ds) / GENERATOR_SUMMARY
        trained_on = json.loads(summary.read_text()).get("shards") if summary.is_file() else None
        if trained_on != stamp:
            stale[ds] = stamp
    return stale


@dg.schedule(job=retrain_job, cron_schedule="0 3 * * *", default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Nightly: retrain and re-evaluate every dataset whose shards changed since its last training.")
def retrain_changed_datasets(context: dg.ScheduleEvaluationContext, storage: ImagegenStorage):
    datasets = context.instance.get_dynamic_partitions(dataset_partitions.name)
    stale = stale_datasets(storage, datasets)
    if not stale:
        return dg.SkipReason(f"all {len(datasets)} datasets are trained on their current shards")
    return [dg.RunRequest(partition_key=ds, run_key=f"{ds}:{stamp}", tags={"imagegen/trigger": "schedule"})
            for ds, stamp in sorted(stale.items())]
