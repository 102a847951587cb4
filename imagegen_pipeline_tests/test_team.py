"""Issue 17.1: the team profile for real. PostgreSQL (Debian's server), `mlflow server` on it with a served artifact
store, and dagster-webserver + dagster-daemon as separate processes on dagster-postgres with the queued run
coordinator. `pipeline_job` runs on a tiny slice through the daemon, a second dataset's run queues behind the gpu
pool, and `down` leaves nothing running."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

import dagster as dg
import mlflow
import psycopg2
import pytest
from dagster_graphql import DagsterGraphQLClient

from imagegen_pipeline import team
from imagegen_pipeline.datasets import import_dataset
from imagegen_pipeline.net import free_port
from imagegen_pipeline.paths import DataPaths

TINY_PIPELINE = {
    "execution": {"config": {"in_process": {}}},
    "ops": {"raw_images": {"config": {"workers": 1}}, "image_shards": {"config": {"workers": 1}},
            "feature_extractor": {"config": {"input_size": 32, "batch_size": 32, "head_epochs": 1,
                                             "finetune_epochs": 1, "max_train_images": 96, "max_val_images": 32,
                                             "min_val_accuracy": 0.0, "device": "cpu"}},
            "image_embeddings": {"config": {"device": "cpu"}},
            "dcgan_checkpoint": {"config": {"device": "cpu", "steps": 30, "batch_size": 16, "ngf": 8, "ndf": 8,
                                            "checkpoint_every": 10, "sample_every": 15, "log_every": 5}},
            "evaluation_report": {"config": {"device": "cpu", "num_samples": 20, "num_real": 20,
                                             "per_class_min": 2, "detector_batch_size": 20}}}}
try:
    team._pg_bin("initdb")
except team.TeamError as exc:  # `make test` installs Debian's postgresql (system-deps); CI fails on this skip
    pytest.skip(f"PostgreSQL server not installed: {exc}", allow_module_level=True)

DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def wait_status(instance, run_id: str, until, timeout: float) -> dg.DagsterRunStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = instance.get_run_by_id(run_id).status
        if status in until:
            return status
        time.sleep(0.5)
    raise TimeoutError(f"run {run_id} still {status} after {timeout:.0f} s")


def dagster_rows(t, query: str, *params) -> list[tuple]:
    """The rows of one query on the team's `dagster` database in PostgreSQL."""
    with psycopg2.connect(host="127.0.0.1", port=t.pg_port, user=team.DB_USER, dbname="dagster") as conn:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()


def running(pid: int) -> bool:
    """Alive and not a zombie (the postmaster's parent is init, which in a container may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def team_up(tmp_path_factory):
    """One team for the module (bringing it up is the slow part): the pipeline test runs on it, then the down test
    takes it down and brings it up again."""
    # PostgreSQL runs as `postgres` when we are root: its folder must be reachable (pytest's tmp_path is 0700)
    root = Path(tempfile.mkdtemp(prefix="imagegen-team-"))
    root.chmod(0o755)
    paths = DataPaths.from_home(tmp_path_factory.mktemp("team") / "home")
    import_dataset("mnist", paths, limit=120)
    import_dataset("mnist", paths, name="digits", limit=120)
    t = team.up(paths, root=root / "team", pg_port=free_port(), mlflow_port=free_port(), dagster_port=free_port())
    with pytest.MonkeyPatch.context() as monkeypatch:
        for k, v in t.env().items():
            monkeypatch.setenv(k, v)
        try:
            yield t
        finally:
            team.down(paths, root=t.root)
            shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_pipeline_runs_through_the_daemon_on_postgres_and_mlflow_server(team_up):
    t = team_up
    instance = dg.DagsterInstance.from_config(str(t.dagster_home))
    instance.add_dynamic_partitions("datasets", ["mnist", "digits"])
    client = DagsterGraphQLClient("127.0.0.1", port_number=t.dagster_port)
    first = client.submit_job_execution("pipeline_job", run_config=TINY_PIPELINE, tags={"dagster/partition": "mnist"})
    second = client.submit_job_execution("pipeline_job", run_config=TINY_PIPELINE,
                                         tags={"dagster/partition": "digits"})
    assert wait_status(instance, first, {dg.DagsterRunStatus.STARTED, *DONE}, 120) == dg.DagsterRunStatus.STARTED
    # both runs hold the gpu pool's ops (feature_extractor, dcgan_checkpoint), whose limit is 1 per run
    assert instance.get_run_by_id(second).status == dg.DagsterRunStatus.QUEUED
    assert wait_status(instance, first, DONE, 600) == dg.DagsterRunStatus.SUCCESS, [
        e.message for e in instance.all_logs(first) if e.is_dagster_event and e.dagster_event.is_failure]
    assert instance.get_run_by_id(second).status == dg.DagsterRunStatus.QUEUED or \
        instance.get_run_by_id(second).start_time >= instance.get_run_by_id(first).end_time

    # the run and its materializations are rows in PostgreSQL
    assert dagster_rows(t, "SELECT status FROM runs WHERE run_id = %s", first) == [("SUCCESS",)]
    materialized = {row[0] for row in dagster_rows(t, "SELECT DISTINCT asset_key FROM event_logs WHERE run_id = %s "
                                                      "AND dagster_event_type = 'ASSET_MATERIALIZATION'", first)}
    assert {'["raw_images"]', '["image_shards"]', '["dcgan_checkpoint"]', '["evaluation_report"]'} <= materialized

    # the generator is in the MLflow server's registry, read over REST by a plain client; its artifacts were
    # uploaded through the server into the served artifact store
    client_ml = mlflow.MlflowClient(tracking_uri=t.mlflow_url, registry_uri=t.mlflow_url)
    [mv] = client_ml.search_model_versions("name = 'imagegen-generator-mnist'")
    assert mv.tags["imagegen.family"] == "dcgan"
    assert "checkpoint" in {a.path for a in client_ml.list_artifacts(mv.run_id)}
    assert list((t.root / "mlflow-artifacts").rglob("latest.pt"))
    run = client_ml.get_run(mv.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # the server's proxy, not a local path
    assert run.data.tags["imagegen.dagster_run"] == first

    # admitted once the pool freed, and running (not failed) until it is terminated
    assert wait_status(instance, second, {dg.DagsterRunStatus.STARTED, *DONE}, 120) == dg.DagsterRunStatus.STARTED
    deadline = time.monotonic() + 120
    while not any(e.dagster_event.event_type_value == "STEP_SUCCESS" for e in instance.all_logs(second)
                  if e.is_dagster_event):  # its first step done: the run really works, it is not just admitted
        assert instance.get_run_by_id(second).status == dg.DagsterRunStatus.STARTED, [
            e.message for e in instance.all_logs(second) if e.is_dagster_event and e.dagster_event.is_failure]
        assert time.monotonic() < deadline, "the second run finished no step"
        time.sleep(0.5)
    client.terminate_run(second)
    assert wait_status(instance, second, DONE, 120) == dg.DagsterRunStatus.CANCELED


@pytest.mark.slow
def test_down_leaves_nothing_running(team_up):
    t = team_up
    paths = DataPaths.from_home(t.home)
    pids = [int((t.root / "run" / f"{s}.pid").read_text()) for s in team.SERVICES]
    postmaster = int((t.pgdata / "postmaster.pid").read_text().split()[0])
    assert all(listening(p) for p in (t.pg_port, t.mlflow_port, t.dagster_port))
    runs = dagster_rows(t, "SELECT count(*) FROM runs")  # two after the pipeline test; 0 when this test runs alone
    team.down(paths, root=t.root)
    team.down(paths, root=t.root)  # idempotent
    assert [pid for pid in [*pids, postmaster] if running(pid)] == []
    assert not any(listening(p) for p in (t.pg_port, t.mlflow_port, t.dagster_port))
    # and the data stays: the next `up` finds its databases and their rows (the module fixture takes it down)
    t2 = team.up(paths, root=t.root, mlflow_port=t.mlflow_port, dagster_port=t.dagster_port)
    assert t2.pg_port == t.pg_port and dagster_rows(t2, "SELECT count(*) FROM runs") == runs
