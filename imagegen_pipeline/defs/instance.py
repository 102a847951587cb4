"""The Dagster instance the CLI and `make ui` share: $DAGSTER_HOME, default $IMAGEGEN_HOME/.dagster."""

import dagster as dg

from imagegen_pipeline.dagster_home import ensure_dagster_home
from imagegen_pipeline.paths import DataPaths


def get_instance(paths: DataPaths) -> dg.DagsterInstance:
    ensure_dagster_home(paths)
    return dg.DagsterInstance.get()
