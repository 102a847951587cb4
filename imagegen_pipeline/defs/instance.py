"""The Dagster instance the CLI and `make ui` share: $DAGSTER_HOME, default $IMAGEGEN_HOME/.dagster."""

import os
import shutil
from pathlib import Path

import dagster as dg

from imagegen_pipeline.paths import REPO_ROOT, DataPaths


def ensure_dagster_home(paths: DataPaths) -> Path:
    """Set $DAGSTER_HOME if unset and give it our dagster.yaml (telemetry and pop-ups off) if it has none."""
    home = Path(os.environ.get("DAGSTER_HOME") or paths.home / ".dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance(paths: DataPaths) -> dg.DagsterInstance:
    ensure_dagster_home(paths)
    return dg.DagsterInstance.get()
