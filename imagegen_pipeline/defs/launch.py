"""Launch a job the way the CLI does: in this process, against the shared instance, for one dataset partition,
after marking runs whose process died as failed (so a resume is not queued behind them)."""

from __future__ import annotations

from collections.abc import Callable

from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline.processes import ProcessRecord


def job_run_config(job_def, run_config: dict | None) -> dict:
    """A preset configures the whole chain; a job takes the `ops` sections of the ops it runs."""
    config = dict(run_config or {})
    if "ops" in config:
        config["ops"] = {op: c for op, c in config["ops"].items() if job_def.graph.has_node_named(op)}
    return config


def run_job(job: str, dataset: str, paths: DataPaths, run_config: dict | None = None, *, tags: dict | None = None,
            log: Callable[[str], None] = lambda _: None):
    """Run one of the Definitions' jobs for a dataset partition in this process, as the UI would; the result."""
    from imagegen_pipeline.definitions import defs
    from imagegen_pipeline.defs.dead_runs import PID_TAG, reap_dead_runs
    from imagegen_pipeline.defs.instance import get_instance
    from imagegen_pipeline.defs.partitions import dataset_partitions

    instance = get_instance(paths)
    for run_id in reap_dead_runs(instance):
        log(f"run {run_id} had died with its process: marked failed, its slots freed")
    if not instance.has_dynamic_partition(dataset_partitions.name, dataset):
        instance.add_dynamic_partitions(dataset_partitions.name, [dataset])
    job_def = defs.resolve_job_def(job)
    config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}, **job_run_config(job_def, run_config)}
    return job_def.execute_in_process(
        partition_key=dataset, instance=instance, run_config=config, raise_on_error=False,
        tags={"imagegen/trigger": "cli", PID_TAG: str(ProcessRecord.of()), **(tags or {})})
