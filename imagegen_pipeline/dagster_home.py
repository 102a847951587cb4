"""Which $DAGSTER_HOME the CLI, `make ui` and the tests share (default $IMAGEGEN_HOME/.dagster), seeded with the
repo's dagster.yaml. Plain files: `ui.py` starts `dagster dev` with it without importing Dagster."""

import os
import shutil
from pathlib import Path

from imagegen_pipeline.paths import REPO_ROOT, DataPaths

OUR_HEADER = "# Instance settings. `make` and the `imagegen` CLI copy this file"


def ensure_dagster_home(paths: DataPaths) -> Path:
    """Set $DAGSTER_HOME if unset and give it our dagster.yaml (telemetry and pop-ups off, a GPU pool of one).

    A copy we made earlier (it starts with our header) is refreshed when the repo's file changes; a file the
    user wrote is left alone."""
    home = Path(os.environ.get("DAGSTER_HOME") or paths.home / ".dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    ours, theirs = REPO_ROOT / "dagster.yaml", home / "dagster.yaml"
    if not theirs.exists() or (theirs.read_text().startswith(OUR_HEADER) and theirs.read_text() != ours.read_text()):
        shutil.copyfile(ours, theirs)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
