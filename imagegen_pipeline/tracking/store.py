"""Where MLflow keeps things: a sqlite backend and an artifact folder under `mlruns/` of the data root."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.entities import Run

from imagegen_pipeline.paths import DataPaths, validate_dataset_name

DEFAULT_UI_URL = "http://127.0.0.1:5000"


def default_tracking_uri(paths: DataPaths) -> str:
    """sqlite under `mlruns/` (the file store is in maintenance mode in MLflow 3)."""
    paths.mlruns.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{paths.mlruns / 'mlflow.db'}"


def artifact_root(paths: DataPaths) -> Path:
    return paths.mlruns / "artifacts"


def experiment_name(dataset: str) -> str:
    return f"imagegen-{validate_dataset_name(dataset)}"


PROGRESS_BAR_VAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def quiet_artifact_progress() -> None:
    """No artifact-download progress bars off a terminal: in a log they are hundreds of lines per registration or
    load. A value the user set is kept."""
    import sys

    if PROGRESS_BAR_VAR not in os.environ and not sys.stderr.isatty():
        os.environ[PROGRESS_BAR_VAR] = "false"


def use_store(tracking_uri: str) -> None:
    """Point this process's MLflow client (tracking and registry) at one store."""
    quiet_artifact_progress()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def ensure_experiment(dataset: str, *, artifacts: Path | None) -> str:
    """The dataset's experiment id, created on first use with its artifacts under `artifacts/<name>`."""
    name = experiment_name(dataset)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (artifacts / name).resolve().as_uri() if artifacts else None
    try:
        return mlflow.create_experiment(name, artifact_location=location, tags={"imagegen.dataset": dataset})
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
        return mlflow.get_experiment_by_name(name).experiment_id


@contextlib.contextmanager
def start_run(tracking_uri: str, dataset: str, *, artifacts: Path | None, run_name: str,
              tags: dict[str, str] | None = None, run_id: str | None = None,
              system_metrics: bool = False) -> Iterator[Run]:
    """One MLflow run under the dataset's experiment (or `run_id` reopened, for a resumed training);
    failed runs are marked FAILED, not left RUNNING. `system_metrics`: CPU, memory, disk and network (and GPU
    where pynvml is installed) sampled into the run while it lasts."""
    use_store(tracking_uri)
    exp_id = ensure_experiment(dataset, artifacts=artifacts)
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            run_id = None  # the store was reset since: start a new run
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id, run_name=None if run_id else run_name,
                          tags={"imagegen.dataset": dataset, **(tags or {})},
                          log_system_metrics=system_metrics) as run:
        yield run


def run_url(ui_url: str, run: Run) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


def model_url(ui_url: str, name: str, version: str | int) -> str:
    return f"{ui_url.rstrip('/')}/#/models/{name}/versions/{version}"


def env_ui_url() -> str:
    return os.environ.get("IMAGEGEN_MLFLOW_UI", DEFAULT_UI_URL)


def tracking_uri(paths: DataPaths) -> str:
    """The store the CLI and servers read: the team's server when $IMAGEGEN_TRACKING_URI says so, else sqlite."""
    return env_tracking_uri() or default_tracking_uri(paths)


def env_tracking_uri() -> str:
    """A team's tracking server (e.g. http://127.0.0.1:5001 from `imagegen team up`), or "" for the embedded store.
    Our own variable, not MLFLOW_TRACKING_URI, which mlflow.set_tracking_uri also sets for the whole process."""
    return os.environ.get("IMAGEGEN_TRACKING_URI", "")
