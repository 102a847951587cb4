"""Resources: where data lives and which MLflow store records it. Tests swap in a temp folder with `home=`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from imagegen_pipeline.paths import DataPaths

if TYPE_CHECKING:
    from imagegen_pipeline.tracking.tracker import Tracker


class ImagegenStorage(dg.ConfigurableResource):
    """The data root: landing zone, manifests, shards and previews all live below it."""

    home: str = Field(default="", description="Data root folder; empty means $IMAGEGEN_HOME, else the repo root.")

    @property
    def paths(self) -> DataPaths:
        return DataPaths.from_home(self.home or None)


class MlflowTracker(dg.ConfigurableResource):
    """Which MLflow store the stages use and where its UI is; `open` hands them a `Tracker` for it."""

    tracking_uri: str = Field(default="", description="MLflow tracking/registry URI; empty = sqlite under "
                                                      "<data root>/mlruns/mlflow.db.")
    ui_url: str = Field(default="", description="Where the MLflow UI is served, for links in metadata; empty = "
                                                "$IMAGEGEN_MLFLOW_UI or http://127.0.0.1:5000.")

    def open(self, paths: DataPaths) -> Tracker:
        """The stages' door to MLflow for this data root."""
        from imagegen_pipeline.tracking.tracker import Tracker

        return Tracker.for_paths(paths, uri=self.tracking_uri, ui=self.ui_url)
