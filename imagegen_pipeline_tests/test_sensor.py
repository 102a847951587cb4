"""The landing sensor: new folders add a partition and one run; bursts settle into one run; bad names are ignored."""

from __future__ import annotations

import os

import dagster as dg

from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.defs.sensors import landing_sensor
from imagegen_pipeline_tests.conftest import noise_png, run_ingest, write


def tick(instance, paths, cursor):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"storage": ImagegenStorage(home=str(paths.home))})
    result = landing_sensor(ctx)
    for req in result.dynamic_partitions_requests or []:  # what the daemon does with the requests
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def test_new_dataset_folder_adds_partition_and_requests_one_run(paths, instance):
    for i in range(3):
        write(paths.raw("birds") / "owl" / f"{i}.png", noise_png(i))
    first = tick(instance, paths, None)
    assert first.run_requests == []  # seen once: wait a tick in case files are still arriving
    second = tick(instance, paths, first.cursor)
    [req] = second.run_requests
    assert req.partition_key == "birds" and req.run_key.startswith("birds:")
    assert [r.partition_keys for r in second.dynamic_partitions_requests] == [["birds"]]
    assert instance.get_dynamic_partitions("datasets") == ["birds"]
    third = tick(instance, paths, second.cursor)
    assert third.run_requests == [] and not third.dynamic_partitions_requests


def test_a_burst_of_new_files_gives_one_run_not_one_per_file(paths, instance):
    write(paths.raw("birds") / "owl" / "0.png", noise_png(0))
    cursor = tick(instance, paths, tick(instance, paths, None).cursor).cursor  # initial ingestion requested
    requests = []
    for i in range(1, 6):  # files keep landing across ticks
        write(paths.raw("birds") / "owl" / f"{i}.png", noise_png(i))
        result = tick(instance, paths, cursor)
        requests += result.run_requests
        cursor = result.cursor
    assert requests == []
    settled = tick(instance, paths, cursor)
    assert [r.partition_key for r in settled.run_requests] == ["birds"]
    assert tick(instance, paths, settled.cursor).run_requests == []


def test_invalid_names_hidden_and_empty_folders_are_ignored(paths, instance):
    write(paths.raw_root / "Bad Name" / "x.png", noise_png(0))
    write(paths.raw_root / ".mnist.importing-123" / "x.png", noise_png(1))
    (paths.raw_root / "empty").mkdir(parents=True)
    result = tick(instance, paths, tick(instance, paths, None).cursor)
    assert result.run_requests == [] and instance.get_dynamic_partitions("datasets") == []


def test_already_ingested_dataset_is_not_requested_again_when_the_sensor_starts(paths, instance):
    write(paths.raw("birds") / "owl" / "0.png", noise_png(0))
    assert run_ingest(instance, "birds").success
    first = tick(instance, paths, None)
    assert first.run_requests == [] and tick(instance, paths, first.cursor).run_requests == []


def test_no_landing_folder_at_all_is_fine(paths, instance):
    result = tick(instance, paths, None)
    assert result.run_requests == [] and result.cursor


SLEEPER = """
import sys, time
import os

import dagster as dg

@dg.op(pool="gpu")
def train():
    time.sleep(300)

@dg.job
def train_job():
    train()

with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
    train_job.execute_in_process(instance=instance)
"""


def test_a_run_whose_worker_died_is_marked_failed_and_its_gpu_slot_freed(tmp_path):
    """Issue 14.1: with `dagster dev` killed as a whole, its runs stayed STARTED with their `gpu` slot held (the
    code server that would have noticed died too, and the DefaultRunLauncher has no health check), so the next
    run queued for ever. dead_run_sensor marks such runs failed and frees the slot; a live run is left alone."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from imagegen_pipeline.defs.dead_runs import dead_run_sensor, reap_dead_runs
    from imagegen_pipeline.paths import REPO_ROOT

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.event_log_storage.set_concurrency_slots("gpu", 1)
        worker = subprocess.Popen([sys.executable, "-c", SLEEPER, str(home)])
        deadline = time.monotonic() + 120
        while not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots:  # the op holds the slot
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED
        assert reap_dead_runs(instance) == []  # alive: left alone
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # the ghost
        result = dead_run_sensor(dg.build_sensor_context(instance=instance))
        assert "marked 1 dead run(s) failed" in str(result.skip_message)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        assert reap_dead_runs(instance) == []


STEPS_IN_SUBPROCESSES = """
import sys, time
import os

import dagster as dg

@dg.op
def first():
    return 1

@dg.op(pool="gpu")
def second(x):
    time.sleep(300)

@dg.job(executor_def=dg.multiprocess_executor)
def two_steps():
    second(first())

if __name__ == "__main__":
    with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
        dg.execute_job(dg.reconstructable(two_steps), instance=instance)
"""


def test_a_live_run_waiting_for_the_gpu_pool_is_not_reaped(tmp_path):
    """Under the multiprocess executor (the default for runs launched from the UI) each step has its own process,
    which ends while the run goes on. With `first` done in its own (ended) process and `second` waiting for the
    `gpu` slot, the reaper must judge the run by its orchestrator (the process that logged RUN_START) and leave
    it alone; once the orchestrator is killed, the run is marked failed."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from imagegen_pipeline.defs.dead_runs import reap_dead_runs, run_processes
    from imagegen_pipeline.paths import REPO_ROOT

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    script = tmp_path / "two_steps.py"
    script.write_text(STEPS_IN_SUBPROCESSES)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("gpu", 1)
        storage.claim_concurrency_slot("gpu", "another-training", "dcgan_checkpoint")  # the GPU is busy
        orchestrator = subprocess.Popen([sys.executable, str(script), str(home)], cwd=tmp_path)
        try:
            deadline = time.monotonic() + 180
            while True:  # `first` has finished in its own process; `second` waits for the slot
                assert orchestrator.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
                runs = instance.get_runs()
                events = [r.event_log_entry.dagster_event for r in instance.get_records_for_run(
                    runs[0].run_id).records] if runs else []
                if any(e is not None and e.step_key == "first" and e.event_type_value == "STEP_SUCCESS"
                       for e in events):
                    break
            time.sleep(3)  # the step process has exited by now
            [run] = runs
            assert [p.pid for p in run_processes(instance, run)] == [orchestrator.pid]
            assert reap_dead_runs(instance) == [] and instance.get_run_by_id(run.run_id).status.value == "STARTED"
            orchestrator.send_signal(signal.SIGKILL)
            orchestrator.wait()
            assert reap_dead_runs(instance) == [run.run_id]
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        finally:
            if orchestrator.poll() is None:
                orchestrator.kill()
                orchestrator.wait()


STEP_WITH_STORAGE = """
import sys, time
import os

import dagster as dg
from imagegen_pipeline.defs.resources import ImagegenStorage

@dg.op
def train(storage: ImagegenStorage):
    time.sleep(300)

@dg.job(executor_def=dg.multiprocess_executor, resource_defs={"storage": ImagegenStorage(home=sys.argv[2])})
def train_in_a_step_process():
    train()

if __name__ == "__main__":
    with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
        dg.execute_job(dg.reconstructable(train_in_a_step_process), instance=instance)
"""


def _instance_home(tmp_path):
    import shutil

    from imagegen_pipeline.paths import REPO_ROOT

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_step_process_dies_with_its_killed_orchestrator_and_only_then_is_the_run_reaped(tmp_path):
    """Issue 28.1: under the multiprocess executor, killing the orchestrator (OOM killer, closed terminal) left its
    step process training, and the reaper marked the run failed and freed its slots while that process still wrote.
    A step that uses the data root now dies with its orchestrator, and the run is failed once no process is left."""
    import signal
    import subprocess
    import sys
    import time

    from imagegen_pipeline.defs.dead_runs import reap_dead_runs

    home = _instance_home(tmp_path)
    script = tmp_path / "train_in_a_step_process.py"
    script.write_text(STEP_WITH_STORAGE)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        orchestrator = subprocess.Popen([sys.executable, str(script), str(home), str(tmp_path / "data")],
                                        cwd=tmp_path)
        step_pid = None
        try:
            deadline = time.monotonic() + 180
            while step_pid is None:  # the step process has started `train`
                assert orchestrator.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
                runs = instance.get_runs()
                starts = [r.event_log_entry.dagster_event for r in instance.get_records_for_run(
                    runs[0].run_id, of_type=dg.DagsterEventType.STEP_START).records] if runs else []
                step_pid = starts[0].pid if starts else None
            [run] = runs
            assert step_pid != orchestrator.pid
            orchestrator.send_signal(signal.SIGKILL)
            orchestrator.wait()
            deadline = time.monotonic() + 60
            while not _gone(step_pid):
                assert time.monotonic() < deadline, f"step process {step_pid} trains on without its orchestrator"
                time.sleep(0.2)
            assert reap_dead_runs(instance) == [run.run_id]
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        finally:
            for pid in (orchestrator.pid, step_pid):
                if pid is not None and not _gone(pid):
                    os.kill(pid, signal.SIGKILL)
            orchestrator.wait()


def _started_run(instance, tags: dict) -> str:
    """A STARTED run with these tags, as a worker would have left it."""
    @dg.op
    def noop():
        pass

    @dg.job
    def some_job():
        noop()

    return instance.create_run_for_job(some_job, status=dg.DagsterRunStatus.STARTED, tags=tags).run_id


def test_a_run_is_dead_only_when_none_of_its_recorded_processes_is_left(tmp_path):
    """Issue 28.1: a run is judged by every process it recorded (orchestrator, step processes), not by the one that
    logged RUN_START: with its orchestrator gone but a step process alive, it lives; with both gone, it is reaped."""
    import socket
    import subprocess
    import sys

    import psutil

    from imagegen_pipeline.defs.dead_runs import reap_dead_runs

    def record(proc) -> str:
        return f"{socket.gethostname()}:{proc.pid}:{psutil.Process(proc.pid).create_time():.2f}"

    orchestrator = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    step = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        tags = {"imagegen/process/orchestrator": record(orchestrator), f"imagegen/process/{step.pid}": record(step)}
        orchestrator.kill()
        orchestrator.wait()
        with dg.DagsterInstance.from_config(str(_instance_home(tmp_path))) as instance:
            run_id = _started_run(instance, tags)
            assert reap_dead_runs(instance) == []  # its step process still trains
            step.kill()
            step.wait()
            assert reap_dead_runs(instance) == [run_id]
    finally:
        for proc in (orchestrator, step):
            proc.kill()
            proc.wait()


def test_a_reused_pid_or_a_zombie_counts_as_dead_and_another_hosts_pid_is_left_alone(tmp_path):
    """Issue 28.2: pids were judged with no start time (a reused pid, or a zombie, stayed alive for ever and kept
    its run's slots) and, for launched runs, with no host. Each record names host, pid and start time."""
    import socket
    import subprocess

    import psutil

    from imagegen_pipeline.defs.dead_runs import PID_TAG, reap_dead_runs

    host, me = socket.gethostname(), psutil.Process()
    zombie = subprocess.Popen(["true"])  # ends, and is not waited for: a zombie
    try:
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
            pass
        with dg.DagsterInstance.from_config(str(_instance_home(tmp_path))) as instance:
            reused = _started_run(instance, {PID_TAG: f"{host}:{me.pid}:{me.create_time() - 3600:.2f}"})
            zombie_run = _started_run(instance, {
                PID_TAG: f"{host}:{zombie.pid}:{psutil.Process(zombie.pid).create_time():.2f}"})
            _started_run(instance, {PID_TAG: f"{host}-elsewhere:999999:{me.create_time():.2f}"})  # not ours to judge
            _started_run(instance, {PID_TAG: f"{host}:{me.pid}:{me.create_time():.2f}"})  # this very process
            assert sorted(reap_dead_runs(instance)) == sorted([reused, zombie_run])
    finally:
        zombie.wait()
