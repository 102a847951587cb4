"""The soak's training half (issue 28.1): the orchestrator of a training run killed under the multiprocess
executor, in process and under Pipes/torchrun; the resume finishes with one trainer at a time. Its own module so
that `make test`'s parallel workers run it beside the ingest soak (test_soak.py), not after it."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from imagegen_pipeline.paths import REPO_ROOT

pytestmark = pytest.mark.slow


TRAIN_UNDER_MULTIPROCESS = """
import sys
import dagster as dg
from imagegen_pipeline.definitions import defs

def train_job():
    return defs.resolve_job_def("train_job")

if __name__ == "__main__":
    every = int(sys.argv[3])  # checkpoint and log cadence: may change between a kill and its resume
    config = {"execution": {"config": {"multiprocess": {}}},
              "ops": {"dcgan_checkpoint": {"config": {"device": "cpu", "steps": int(sys.argv[2]), "batch_size": 16,
                                                      "ngf": 8, "ndf": 8, "checkpoint_every": every,
                                                      "sample_every": 10 * every, "log_every": every,
                                                      "ema_start_step": 2}}}}
    with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
        result = dg.execute_job(dg.reconstructable(train_job), instance=instance, run_config=config,
                                tags={"dagster/partition": "mnist"})
        sys.exit(0 if result.success else 1)
"""


def _trainer_processes(home) -> list[psutil.Process]:
    """Live processes of the training module (torchrun's agent and ranks) that work on the data root `home`: not
    those of another test running beside this one."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if ("imagegen_pipeline.external.train_generator" in " ".join(p.info["cmdline"] or [])
                and p.info["status"] != psutil.STATUS_ZOMBIE):
            try:
                if p.environ().get("IMAGEGEN_HOME") == str(home):
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return found


def _rank_groups(home) -> int:
    """Live torchrun ranks of the training module on `home`, counted as groups by their parent (one torchrun agent
    per training run; an orphaned rank has another parent, so it counts as a group of its own)."""
    parents = set()
    for p in _trainer_processes(home):
        try:
            if "torch.distributed.run" not in " ".join(p.cmdline()):
                parents.add(p.ppid())
        except psutil.NoSuchProcess:
            continue
    return len(parents)


@pytest.mark.parametrize("training", ["in_process", "torchrun"])
def test_a_training_whose_orchestrator_is_killed_leaves_one_trainer_and_the_resume_finishes(tmp_path, monkeypatch,
                                                                                            training):
    """Issue 28.1: under the multiprocess executor, killing the orchestrator during `dcgan_checkpoint` left its
    step process training; the reaper failed the run at once and freed its slot, and the resume trained into the
    same folder beside it. Now the step process dies with its orchestrator, the run is reaped only then, and the
    resume finishes from the checkpoint: at no moment do two processes train into the run folder. Under
    Pipes/torchrun the trainers are the ranks: they die with the step process that launched them."""
    import shutil
    import signal
    import threading
    import time

    import dagster as dg
    import psutil
    import torch

    from imagegen_pipeline.datasets import import_dataset
    from imagegen_pipeline.defs.dead_runs import reap_dead_runs
    from imagegen_pipeline.paths import DataPaths
    from imagegen_pipeline_tests.conftest import SERIAL, run_ingest

    home = tmp_path / "data"
    monkeypatch.setenv("IMAGEGEN_HOME", str(home))
    paths = DataPaths.from_home(home)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copyfile(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    script = tmp_path / "train_under_multiprocess.py"
    script.write_text(TRAIN_UNDER_MULTIPROCESS)
    steps = 1500
    import_dataset("mnist", paths, limit=200)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert run_ingest(instance, "mnist", SERIAL).success

        def trainers() -> set[int]:
            """Live processes that run `dcgan_checkpoint` in process (the pid of each run's STEP_START)."""
            live = set()
            for run in instance.get_runs(filters=dg.RunsFilter(job_name="train_job")):
                for record in instance.get_records_for_run(run.run_id,
                                                           of_type=dg.DagsterEventType.STEP_START).records:
                    pid = record.event_log_entry.dagster_event.pid
                    try:
                        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                            live.add(pid)
                    except psutil.NoSuchProcess:
                        pass
            return live

        most, stop = [0], threading.Event()

        def watch() -> None:
            while not stop.is_set():
                most[0] = max(most[0], _rank_groups(home) if training == "torchrun" else len(trainers()))
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        env = {**os.environ, "IMAGEGEN_TRAINING": training, "IMAGEGEN_TRAINING_PROCS": "2", "OMP_NUM_THREADS": "1"}
        # The killed run checkpoints and logs every 5 steps (about 30 ms a step): a trainer that outlived its
        # orchestrator would go on for about 45 s, past the reap and the relaunch. The resume checkpoints every 500
        # (a field a resume may change), so it finishes its 1,495 steps in seconds instead of another 45 s.
        first = subprocess.Popen([sys.executable, str(script), str(dagster_home), str(steps), "5"], cwd=tmp_path,
                                 env=env)
        second = None
        try:
            deadline = time.monotonic() + 300
            while not list(paths.checkpoints("mnist").rglob("latest.pt")):  # training, past its first checkpoint
                assert first.poll() is None and time.monotonic() < deadline, "no checkpoint before the kill"
                time.sleep(0.2)
            assert _rank_groups(home) == 1 if training == "torchrun" else trainers()
            first.send_signal(signal.SIGKILL)
            first.wait()
            [killed] = instance.get_runs(filters=dg.RunsFilter(job_name="train_job"))
            deadline = time.monotonic() + 120
            while not reap_dead_runs(instance):  # what dead_run_sensor does every 30 s, sooner
                assert time.monotonic() < deadline, "the killed run was never reaped"
                time.sleep(0.5)
            assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
            second = subprocess.Popen([sys.executable, str(script), str(dagster_home), str(steps), "500"],
                                      cwd=tmp_path, env=env)
            deadline = time.monotonic() + 600
            while second.poll() is None:  # the resume trains; the killed run's trainer must be gone
                assert most[0] <= 1, f"{most[0]} processes trained into the run folder at once"
                assert time.monotonic() < deadline, "the resumed run did not finish"
                time.sleep(0.5)
            assert second.returncode == 0
        finally:
            stop.set()
            watcher.join()
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for pid in trainers():
                os.kill(pid, signal.SIGKILL)
            for p in _trainer_processes(home):  # torchrun's agent and ranks, had a check failed
                p.kill()
        assert most[0] == 1, f"{most[0]} processes trained into the run folder at once"
        [checkpoint] = list(paths.checkpoints("mnist").rglob("latest.pt"))
        assert torch.load(checkpoint, map_location="cpu", weights_only=True)["step"] == steps
        [resumed] = [r for r in instance.get_runs() if r.run_id != killed.run_id and r.job_name == "train_job"]
        assert resumed.status == dg.DagsterRunStatus.SUCCESS
        [mat] = [e for e in instance.all_logs(resumed.run_id) if e.dagster_event is not None
                 and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"]
        assert mat.dagster_event.event_specific_data.materialization.metadata["resumed_from_step"].value > 0
