"""The one door to MLflow for the pipeline's stages: runs, metrics, images, artifacts, dataset lineage, registered
models, aliases and version tags. A stage is handed a `Tracker` (by the Dagster resource, or built directly in a
test over a temporary sqlite store) and never imports mlflow itself, so swapping the store (sqlite, a team's
`mlflow server`) is configuration only."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline.tracking import registry, store


@dataclass(frozen=True)
class Tracker:
    uri: str  # tracking and registry URI
    artifacts: Path | None  # artifact root for new experiments (None: the server decides)
    ui: str  # where people open the MLflow UI: links in metadata
    home: Path | None = None  # data root: checked for free space before every run

    @classmethod
    def for_paths(cls, paths: DataPaths, *, uri: str = "", ui: str = "") -> Tracker:
        """The project's store: `uri` when given, else $IMAGEGEN_TRACKING_URI (a team's `mlflow server`), else
        sqlite under <home>/mlruns."""
        uri = uri or store.env_tracking_uri()
        return cls(uri or store.tracking_uri(paths), None if uri else store.artifact_root(paths),
                   ui or store.env_ui_url(), paths.home)

    @contextlib.contextmanager
    def run(self, dataset: str, *, run_name: str, tags: dict[str, str] | None = None,
            resume_id: str | None = None, system_metrics: bool = False) -> Iterator[TrackedRun]:
        """A run in the dataset's experiment (`resume_id` reopened when the store still has it); a failure marks
        it FAILED. Training runs set `system_metrics`: the machine's load is logged beside the losses."""
        if self.home is not None:
            from imagegen_pipeline.atomic import require_free_space

            require_free_space(self.home)  # every training and evaluation starts here
        with store.start_run(self.uri, dataset, artifacts=self.artifacts, run_name=run_name, tags=tags,
                             run_id=resume_id, system_metrics=system_metrics) as run:
            yield TrackedRun(self, run)

    # the registry
    def client(self) -> MlflowClient:
        store.use_store(self.uri)  # mlflow.pyfunc and artifact downloads read the process-wide URIs
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def version(self, name: str, version: str) -> ModelVersion:
        return self.client().get_model_version(name, str(version))

    def alias_holder(self, name: str, alias: str = registry.CHAMPION) -> ModelVersion | None:
        """The version holding `alias`; None only when none does (a locked store raises)."""
        return registry.current_alias_holder(name, alias, client=self.client())

    def newest_or_champion(self, name: str) -> ModelVersion | None:
        """The champion, else the newest version, else None when nothing is registered under `name`."""
        client = self.client()
        try:
            return registry.current_alias_holder(name, client=client) or max(
                client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version), default=None)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # a locked store is an error, not "nothing registered"
                raise
            return None

    def versions(self, name: str) -> list[ModelVersion]:
        """Every registered version of `name`, oldest first (none when the name is not registered)."""
        return sorted(self.client().search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))

    def run_metric(self, run_id: str, key: str) -> float | None:
        """A run's last value of metric `key`, or None."""
        return self.client().get_run(run_id).data.metrics.get(key)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client().set_registered_model_alias(name, alias, str(version))

    def tag_version(self, name: str, version: str, tags: dict[str, Any]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, str(value))

    def untag_version(self, name: str, version: str, key: str) -> None:
        client = self.client()
        if key in client.get_model_version(name, str(version)).tags:
            client.delete_model_version_tag(name, str(version), key)

    def model_artifact(self, name: str, version: str, key: str, dst: Path) -> Path:
        """The file a registered version serves (raises registry.MissingArtifact when the store lost it)."""
        self.client()
        return registry.download_model_artifact(name, str(version), key, dst)

    def run_artifact(self, run_id: str, path: str, dst: Path) -> Path:
        """A file logged with a run; registry.MissingArtifact when the artifact store cannot give it."""
        self.client()
        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))
        except (MlflowException, OSError) as exc:
            raise registry.MissingArtifact(f"{type(exc).__name__}: {str(exc)[:200]}") from None

    def promote_if_better(self, name: str, version: str, guards: list[registry.Guard]) -> registry.PromotionDecision:
        return registry.promote_if_better(name, str(version), guards, client=self.client())

    def log_model_metrics(self, mv: ModelVersion, run_id: str, metrics: dict[str, float]) -> None:
        """Scores recorded against the LoggedModel (MLflow 3: shown on the model's page) as well as on its run."""
        model_id = logged_model_id(mv)
        if model_id:
            self.client().log_batch(run_id, metrics=[
                mlflow.entities.Metric(k, float(v), _now_ms(), 0, model_id=model_id) for k, v in metrics.items()])

    def model_link(self, name: str, version: str | int) -> str:
        return store.model_url(self.ui, name, version)


@dataclass(frozen=True)
class TrackedRun:
    tracker: Tracker
    run: Run

    @property
    def id(self) -> str:
        return self.run.info.run_id

    @property
    def link(self) -> str:
        return store.run_url(self.tracker.ui, self.run)

    def log_params(self, params: dict) -> None:
        mlflow.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_image(self, image: np.ndarray, *, file: str | None = None, key: str | None = None,
                  step: int | None = None) -> None:
        """A still (`file`, e.g. "confusion_matrix.png") or one frame of a series (`key` + `step`)."""
        if file:
            mlflow.log_image(image, file)
        else:
            mlflow.log_image(image, key=key, step=step)

    def log_artifact(self, path: Path, folder: str) -> None:
        mlflow.log_artifact(str(path), artifact_path=folder)

    def log_artifacts(self, path: Path, folder: str) -> None:
        mlflow.log_artifacts(str(path), artifact_path=folder)

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_shards(self, shards_dir: Path | str, stamp: str, dataset: str, context: str = "training") -> None:
        """The shard folder (or its URI) as the run's input dataset (MLflow lineage: which data, by content key)."""
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # two local-path source types match; MLflow picks the local artifact one
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(shards_dir if "://" in str(shards_dir) else str(Path(shards_dir).resolve()))
        mlflow.log_input(MetaDataset(source, name=f"{dataset}-shards", digest=stamp[:36]), context=context)

    def register_code_model(self, *, code_file: Path, artifacts: dict[str, str], name: str,
                            example: Any = None, params: dict | None = None, metadata: dict | None = None,
                            metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None
                            ) -> ModelVersion:
        """Log a models-from-code pyfunc into this run and register it as a new version of `name`; `example` (an
        input DataFrame) and `params` (inference parameters with defaults) become its signature."""
        import warnings

        from mlflow.models import infer_signature

        with warnings.catch_warnings():  # `seed` and `count` are whole numbers by design; a missing one is refused
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
            signature = infer_signature(example, params=params) if example is not None else None
        return registry.log_code_model(code_file=code_file, artifacts=artifacts, registered_model_name=name,
                                       signature=signature, input_example=example, metadata=metadata,
                                       metrics=metrics, tags=tags)


def logged_model_id(mv: ModelVersion) -> str | None:
    """The LoggedModel a registered version was made from: `model_id`, which the sqlite registry leaves empty,
    else the `models:/m-...` source it was registered from."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    source = mv.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
