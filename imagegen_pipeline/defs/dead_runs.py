"""Runs whose worker process died (SIGKILL, OOM, `dagster dev` killed as a whole) stay STARTED for ever and keep
their `gpu` pool slot, so the next run of that dataset (a resume) queues behind a ghost. The code server marks a
run failed when its own child dies, but not when the code server died with it, and the DefaultRunLauncher has no
worker health check for run monitoring. This finds such runs and marks them failed, freeing their slots.

A run's worker is the process that logged its RUN_START (the orchestrator, not a step process); for CLI runs, the
`imagegen/cli_process` tag (host:pid). A pid is only judged on this machine: runs launched elsewhere (any other
run launcher) and CLI runs of other hosts are left alone.
"""

from __future__ import annotations

import os
import socket

import dagster as dg

PID_TAG = "imagegen/cli_process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True


def worker_pid(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int | None:
    """The pid of the process executing `run` on this machine, or None if it cannot be known here."""
    owner = run.tags.get(PID_TAG)
    if owner is not None:
        host, _, pid = owner.rpartition(":")
        return int(pid) if host == socket.gethostname() and pid.isdigit() else None
    if type(instance.run_launcher).__name__ != "DefaultRunLauncher":
        return None
    # RUN_START comes from the process that orchestrates the run. Engine events also come from step processes
    # (the multiprocess executor), which end between steps while the run lives on: never judge by those.
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
    event = records[0].event_log_entry.dagster_event if records else None
    return event.pid if event is not None and event.pid else None


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark every STARTED run whose worker process is gone as failed and free its pool slots; return their ids."""
    reaped = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        pid = worker_pid(instance, run)
        if pid is None or _alive(pid):
            continue
        fresh = instance.get_run_by_id(run.run_id)
        if fresh is None or fresh.status != dg.DagsterRunStatus.STARTED:
            continue
        instance.report_run_failed(fresh, f"its worker process {pid} is gone (killed, or out of memory); marked "
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
           description="Marks runs whose worker process died (kill -9, out of memory, dagster dev killed) as failed "
                       "and frees their gpu pool slots, so the next run resumes instead of queueing behind them.")
def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    reaped = reap_dead_runs(context.instance)
    for run_id in reaped:
        context.log.warning(f"run {run_id}: worker gone, marked failed and its slots freed")
    return dg.SkipReason(f"marked {len(reaped)} dead run(s) failed" if reaped else "no dead runs")
