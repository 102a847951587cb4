"""The two UIs for real: `dagster dev` and `mlflow server` on loopback, looked at in headless Chromium."""

from __future__ import annotations

import json
import time
import urllib.request

import dagster as dg
import pytest

from imagegen_pipeline.datasets import import_dataset
from imagegen_pipeline.net import free_port, url_for
from imagegen_pipeline.ui import start_dagster, start_mlflow, stop, wait_http
from imagegen_pipeline_tests import browser

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))

LOCATION = "imagegen_pipeline"
# Launchpad config that keeps the tiny run quick: one process for all steps, one decoding process per asset.
QUICK = {"execution": {"config": {"in_process": {}}},
         "ops": {"raw_images": {"config": {"workers": 1}}, "image_shards": {"config": {"workers": 1}}}}


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    payload = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"{base}/graphql", data=payload, headers={"Content-Type": "application/json"},
                                 method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.load(resp)
    assert not answer.get("errors"), answer["errors"]
    return answer["data"]


WORKSPACE = """query { workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""

LAUNCH_RUN = """mutation($executionParams: ExecutionParams!) { launchRun(executionParams: $executionParams) {
  __typename
  ... on LaunchRunSuccess { run { runId status tags { key value } } }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on Error { message } } }"""

RUN = """query($runId: ID!) { runOrError(runId: $runId) { __typename
  ... on Run { status assetMaterializations { assetKey { path } partition } }
  ... on Error { message } } }"""


def wait_location_loaded(base: str, *, timeout: float) -> None:
    """The webserver answers before its code server has loaded our definitions; launching needs them loaded."""
    deadline = time.monotonic() + timeout
    while True:
        entries = graphql(base, WORKSPACE)["workspaceOrError"].get("locationEntries", [])
        [entry] = [e for e in entries if e["name"] == LOCATION] or [None]
        if entry and entry["loadStatus"] == "LOADED":
            assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
            return
        assert time.monotonic() < deadline, f"code location not loaded after {timeout} s: {entries}"
        time.sleep(0.5)


def wait_run(base: str, run_id: str, *, timeout: float) -> dict:
    """Poll the run until it ends (the daemon dequeues it, a worker process runs it); return it."""
    deadline = time.monotonic() + timeout
    while True:
        run = graphql(base, RUN, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']} after {timeout} s"
        time.sleep(0.5)


@pytest.mark.slow
def test_dagster_ui_runs_ingest_for_a_partition_and_shows_the_materialized_asset(paths, tmp_path, monkeypatch):
    """A real `dagster dev` (webserver + daemon) runs `ingest_job` for partition mnist launched over GraphQL as the
    UI does, and the rendered asset page shows image_shards (upstream raw_images) materialized for mnist."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / ".dagster"))
    import_dataset("mnist", paths, limit=60)
    from imagegen_pipeline.dagster_home import ensure_dagster_home

    with dg.DagsterInstance.from_config(str(ensure_dagster_home(paths))) as instance:
        instance.add_dynamic_partitions("datasets", ["mnist"])

    port = free_port()
    base = url_for("127.0.0.1", port)
    log = tmp_path / "dagster.log"
    server = start_dagster(paths, port=port, log=log)
    try:
        wait_http(f"{base}/server_info", timeout=90, proc=server)
        wait_location_loaded(base, timeout=90)
        launched = graphql(base, LAUNCH_RUN, {"executionParams": {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__",
                         "jobName": "ingest_job"},
            "runConfigData": QUICK,
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "mnist"}]}}})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run = wait_run(base, launched["run"]["runId"], timeout=120)
        assert run["status"] == "SUCCESS", log.read_text()[-4000:]
        assert sorted((m["assetKey"]["path"], m["partition"]) for m in run["assetMaterializations"]) == [
            (["image_shards"], "mnist"), (["raw_images"], "mnist")]

        with browser.Browser(log=tmp_path / "chromedriver.log") as page:
            page.open(f"{base}/assets/image_shards?partition=mnist")
            # Its group, its upstream raw_images, the latest materialization (partition mnist, 60 rows, our shards).
            page.wait_for_text("image_shards", "raw_images", "ingestion", "Latest materialization", "mnist",
                               "Row count", str(paths.shards("mnist")), timeout=60)
            page.screenshot(tmp_path / "dagster-image_shards.png")
    except BaseException:
        print(log.read_text()[-6000:] if log.is_file() else "(no dagster log)")
        raise
    finally:
        stop(server)
    assert (paths.shards("mnist") / "description.json").is_file()  # the run wrote the shards of our data root


MODEL_CODE = '''import mlflow.pyfunc


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, model_input: list[str]) -> list[str]:
        return model_input


mlflow.models.set_model(Echo())
'''


@pytest.mark.slow
def test_registered_generator_is_listed_in_the_mlflow_ui(paths, mlflow_uri, tmp_path):
    """A real `mlflow server` over the pipeline's store lists imagegen-generator-mnist on its registered-models page."""
    import mlflow

    from imagegen_pipeline.tracking.store import artifact_root, start_run

    code = tmp_path / "echo_model.py"
    code.write_text(MODEL_CODE)
    with start_run(mlflow_uri, "mnist", artifacts=artifact_root(paths), run_name="tiny"):  # artifacts in tmp_path
        mlflow.pyfunc.log_model(name="generator", python_model=str(code), pip_requirements=["mlflow"],
                                registered_model_name="imagegen-generator-mnist")

    port = free_port()
    base = url_for("127.0.0.1", port)
    log = tmp_path / "mlflow.log"
    server = start_mlflow(paths, port=port, log=log)
    try:
        wait_http(f"{base}/health", timeout=90, proc=server)
        with browser.Browser(log=tmp_path / "chromedriver.log") as page:
            page.open(f"{base}/#/models")
            page.wait_for_text("imagegen-generator-mnist", timeout=60)
            page.screenshot(tmp_path / "mlflow-models.png")
    except BaseException:
        print(log.read_text()[-6000:] if log.is_file() else "(no mlflow log)")
        raise
    finally:
        stop(server)
