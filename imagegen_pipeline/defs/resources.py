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
