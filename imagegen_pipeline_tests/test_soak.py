"""The soak in CI (issue 14.1): a real `dagster dev`; the run worker, the daemon and `dagster dev` itself killed
with SIGKILL during `pipeline_job`; every relaunch goes on, and nothing on disk or in the registry is lost.
The long version (10 kills, disk full, concurrent launches) is `python bench/soak.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from imagegen_pipeline.paths import REPO_ROOT

pytestmark = pytest.mark.slow


def test_killed_runs_fail_cleanly_and_the_next_run_finishes_with_nothing_lost(tmp_path):
    out = tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGEGEN_HOME", "DAGSTER_HOME")}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "soak.py"), "--kills", "1", "--quick",
                           "--images", "600", "--steps", "150", "--home", str(tmp_path / "home"), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    planned = [r for r in result["rows"] if r["fault"].startswith("SIGKILL")]  # (an unplanned exit is retried)
    faults = [r["fault"] for r in planned]
    assert faults[0] in ("SIGKILL run worker in raw_images", "SIGKILL run worker in image_shards"), faults
    assert faults[1:] == ["SIGKILL daemon", "SIGKILL dagster dev"], faults
    # a killed worker fails its run; with the daemon killed, `dagster dev` stops and the worker finishes its run
    assert [r["run_status_after"] for r in planned] in (["FAILURE"] * 3, ["FAILURE", "SUCCESS", "FAILURE"])
    assert all(r["audit"] == "ok" for r in result["rows"] if "audit" in r)
    k = result["kills"]
    assert k["final_run"] == "SUCCESS" and k["unloadable_files"] == 0
    assert k["killed_runs_failed"] + k["killed_runs_finished"] == k["killed_runs"] >= 3  # none left STARTED
    assert k["checkpoint_step"] == k["configured_steps"] == 150
    assert k["registry_versions"] == k["completed_trainings"] >= 1
