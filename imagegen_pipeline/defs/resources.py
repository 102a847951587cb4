"""Resources: where data lives. Tests swap in a temp folder by constructing it with `home=`."""


import dagster as dg
from pydantic import Field

from imagegen_pipeline.paths import DataPaths


class ImagegenStorage(dg.ConfigurableResource):
    """The data root: landing zone, manifests, shards and previews all live below it."""

    home: str = Field(default="", description="Data root folder; empty means $IMAGEGEN_HOME, else the repo root.")

    @property
    def paths(self) -> DataPaths:
        return DataPaths.from_home(self.home or None)


class MlflowTracker(dg.ConfigurableResource):
    """Our own thin MLflow resource: which store to use and where its UI is; the training loop never sees it."""

    tracking_uri: str = Field(default="", description="MLflow tracking/registry URI; empty = sqlite under "
                                                      "<data root>/mlruns/mlflow.db.")
    ui_url: str = Field(default="", description="Where the MLflow UI is served, for links in metadata; empty = "
                                                "$IMAGEGEN_MLFLOW_UI or http://127.0.0.1:5000.")

    def uri(self, paths: DataPaths) -> str:
        from imagegen_pipeline.tracking.store import default_tracking_uri

        return self.tracking_uri or default_tracking_uri(paths)

    def start_run(self, paths: DataPaths, dataset: str, *, run_name: str, tags: dict[str, str] | None = None,
                  run_id: str | None = None):
        from imagegen_pipeline.atomic import require_free_space
        from imagegen_pipeline.tracking.store import artifact_root, start_run

        require_free_space(paths.home)  # every training and evaluation starts here
        return start_run(self.uri(paths), dataset, artifacts=artifact_root(paths), run_name=run_name, tags=tags,
                         run_id=run_id)

    @property
    def ui(self) -> str:
        from imagegen_pipeline.tracking.store import env_ui_url

        return self.ui_url or env_ui_url()

    def link(self, run) -> str:
        from imagegen_pipeline.tracking.store import run_url

        return run_url(self.ui, run)

    def model_link(self, name: str, version: str | int) -> str:
        from imagegen_pipeline.tracking.store import model_url

        return model_url(self.ui, name, version)
