"""The landing sensor: a new dataset folder adds its partition; new files request one ingestion run."""


import json

import dagster as dg

from imagegen_pipeline.defs.jobs import pipeline_job
from imagegen_pipeline.defs.partitions import dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.ingest.landing_watch import decide
from imagegen_pipeline.paths import MANIFEST_FILE


@dg.sensor(job=pipeline_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Watches data/raw/: a new or changed dataset folder, once it stops changing for one tick, "
                       "gets its partition and one run of the whole chain (ingestion to evaluation).")
def landing_sensor(context: dg.SensorEvaluationContext, storage: ImagegenStorage) -> dg.SensorResult:
    paths = storage.paths
    cursor = json.loads(context.cursor) if context.cursor else {}
    manifests = {}
    if (paths.data / "manifests").is_dir():
        manifests = {d.name: (d / MANIFEST_FILE).stat().st_mtime_ns
                     for d in (paths.data / "manifests").iterdir() if (d / MANIFEST_FILE).is_file()}
    decision = decide(paths.raw_root, cursor, manifest_mtime_ns=manifests)
    for name, why in decision.skipped.items():
        context.log.info(f"ignoring data/raw/{name}: {why}")
    existing = set(context.instance.get_dynamic_partitions(dataset_partitions.name))
    new_partitions = [d for d in decision.ready if d not in existing]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=d, run_key=f"{d}:{decision.cursor['requested'][d]}",
                                    tags={"imagegen/trigger": "landing_sensor"}) for d in decision.ready],
        dynamic_partitions_requests=[dataset_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(decision.cursor, sort_keys=True),
    )
