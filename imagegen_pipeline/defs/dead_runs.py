"""Runs whose worker process died (SIGKILL, OOM, `dagster dev` killed as a whole) stay STARTED for ever and keep
their `gpu` pool slot, so the next run of that dataset (a resume) queues behind a ghost. The code server marks a
run failed when its own child dies, but not when the code server died with it, and the DefaultRunLauncher has no
worker health check for run monitoring. This finds such runs and marks them failed, freeing their slots.

A run is dead only when none of its processes is left: the CLI process (`imagegen/cli_process`), the
orchestrator and every step process that used the data root (`imagegen/process/...`, which they record as they
start, each as host:pid:start time). A step process also dies with its orchestrator, so a killed orchestrator
does not leave a trainer writing into a run folder that the next run resumes. A launched run that has recorded
nothing yet is judged by the process that logged its RUN_START, assumed to be of this machine. Processes of
another host are left alone: only their host can judge them.
"""

from __future__ import annotations

import dagster as dg

from imagegen_pipeline.processes import ProcessRecord, die_with

PID_TAG = "imagegen/cli_process"
PROCESS_TAG = "imagegen/process/"  # + "orchestrator", or a step process's pid


def _run_start(instance: dg.DagsterInstance, run_id: str) -> dg.EventLogEntry | None:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
    return records[0].event_log_entry if records else None


def record_step_process(context: dg.InitResourceContext) -> None:
    """Tag the run with this step process and its orchestrator (the process that logged RUN_START, on this host
    under the in-process and multiprocess executors), and make this process die with its orchestrator."""
    run, instance = context.dagster_run, context.instance
    if run is None or instance is None or PID_TAG in run.tags:  # outside a run; a CLI run is its own process
        return
    entry = _run_start(instance, run.run_id)
    if entry is None or entry.dagster_event is None or not entry.dagster_event.pid:
        return
    me = ProcessRecord.of()
    orchestrator = ProcessRecord.started_by(entry.dagster_event.pid, entry.timestamp)
    tags = {f"{PROCESS_TAG}orchestrator": str(orchestrator)}
    if orchestrator.pid != me.pid:
        tags[f"{PROCESS_TAG}{me.pid}"] = str(me)
        die_with(orchestrator)
    if any(run.tags.get(k) != v for k, v in tags.items()):
        instance.add_run_tags(run.run_id, tags)


def run_processes(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[ProcessRecord]:
    """Every process recorded for `run`; for a launched run that recorded none yet, the one that logged RUN_START."""
    records = [ProcessRecord.parse(v) for k, v in run.tags.items() if k == PID_TAG or k.startswith(PROCESS_TAG)]
    if records or type(instance.run_launcher).__name__ != "DefaultRunLauncher":
        return records
    # RUN_START comes from the process that orchestrates the run. Engine events also come from step processes
    # (the multiprocess executor), which end between steps while the run lives on: never judge by those alone.
    entry = _run_start(instance, run.run_id)
    if entry is None or entry.dagster_event is None or not entry.dagster_event.pid:
        return []
    return [ProcessRecord.started_by(entry.dagster_event.pid, entry.timestamp)]


def is_dead(records: list[ProcessRecord]) -> bool:
    """Known here to have no process left: something recorded, all of it on this host, none of it running."""
    return bool(records) and all(r.local for r in records) and not any(r.alive() for r in records)


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark every STARTED run with no process left as failed and free its pool slots; return their ids."""
    reaped = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        records = run_processes(instance, run)
        if not is_dead(records):
            continue
        fresh = instance.get_run_by_id(run.run_id)
        if fresh is None or fresh.status != dg.DagsterRunStatus.STARTED:
            continue
        gone = ", ".join(str(r) for r in records)
        instance.report_run_failed(fresh, f"its processes ({gone}) are gone (killed, or out of memory); marked "
                                          "failed so that the next run can resume")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reaped.append(run.run_id)
    holders = instance.event_log_storage.get_concurrency_run_ids()
    if holders:  # a run that ended (its worker killed) but still holds pool slots
        for record in instance.get_run_records(filters=dg.RunsFilter(run_ids=list(holders), statuses=[
                dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.SUCCESS])):
            instance.event_log_storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
    return reaped


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Marks runs with no process left (kill -9, out of memory, dagster dev killed) as failed "
                       "and frees their gpu pool slots, so the next run resumes instead of queueing behind them.")
def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    reaped = reap_dead_runs(context.instance)
    for run_id in reaped:
        context.log.warning(f"run {run_id}: no process left, marked failed and its slots freed")
    return dg.SkipReason(f"marked {len(reaped)} dead run(s) failed" if reaped else "no dead runs")
