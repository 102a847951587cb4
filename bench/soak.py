"""Faults through a real Dagster deployment: SIGKILL the run worker, the daemon and `dagster dev` itself at
random moments of `pipeline_job`, fill the disk, launch runs at the same time, and check that nothing is lost.

Everything is real: `dagster dev` (webserver + daemon + code server) on loopback, runs launched over GraphQL as
the UI does, the run worker a separate process, MLflow on sqlite, the data root on the local disk (the disk-full
phase mounts a small tmpfs, which needs root). After every fault it audits the data root: every Parquet,
checkpoint, safetensors and JSON file must load (no partial file under a real name), the registry must hold
exactly one generator version per completed training, and the run that was killed must end FAILURE with its
`gpu` pool slot free. Prints the table the README shows.

    python bench/soak.py                       # 10 run-worker kills + daemon + dagster dev, disk full, concurrency
    python bench/soak.py --kills 2 --quick     # what CI runs (imagegen_pipeline_tests/test_soak.py)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imagegen_pipeline.paths import DataPaths  # noqa: E402
from imagegen_pipeline.net import free_port, url_for  # noqa: E402
from imagegen_pipeline.ui import start_dagster, stop, wait_http  # noqa: E402

LOCATION = "imagegen_pipeline"
PHASES = {"ingest": ("raw_images", "image_shards"), "extractor": ("feature_extractor", "image_embeddings"),
          "dcgan": ("dcgan_checkpoint",), "evaluation": ("evaluation_report", "sample_gallery")}


def run_config(steps: int) -> dict:
    """pipeline_job small enough for a 2-core box: every stage does real work, a run takes about a minute."""
    return {"execution": {"config": {"in_process": {}}},
            "ops": {"raw_images": {"config": {"workers": 1}}, "image_shards": {"config": {"workers": 1}},
                    "feature_extractor": {"config": {"input_size": 32, "batch_size": 32, "head_epochs": 1,
                                                     "finetune_epochs": 1, "max_train_images": 160,
                                                     "max_val_images": 64, "min_val_accuracy": 0.0,
                                                     "device": "cpu"}},
                    "dcgan_checkpoint": {"config": {"device": "cpu", "steps": steps, "batch_size": 32, "ngf": 32,
                                                    "ndf": 32, "checkpoint_every": 25, "sample_every": 100,
                                                    "log_every": 25}},
                    "evaluation_report": {"config": {"device": "cpu", "num_samples": 20, "num_real": 20,
                                                     "per_class_min": 2, "detector_batch_size": 20}}}}


# ---- Dagster over GraphQL, as the UI talks to it --------------------------------------------------------------

LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on RunConfigValidationInvalid { errors { message } }
  ... on Error { message } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status
  stepStats { stepKey status startTime endTime } } } }"""
WORKSPACE = "query { workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"


class DagsterExited(RuntimeError):
    """`dagster dev` stopped without being told to (it stops everything when its daemon dies)."""


class Dagster:
    """`dagster dev` for one data root, started and stopped like `imagegen ui` does."""

    def __init__(self, paths: DataPaths, log: Path):
        self.paths, self.log = paths, log
        self.port = free_port()
        self.base = url_for("127.0.0.1", self.port)
        self.proc = start_dagster(paths, port=self.port, log=log)
        wait_http(f"{self.base}/server_info", timeout=180, proc=self.proc)
        deadline = time.monotonic() + 180
        while not any(e["name"] == LOCATION and e["loadStatus"] == "LOADED" for e in self._entries()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"code location not loaded; see {log}")
            time.sleep(0.5)

    def _entries(self) -> list[dict]:
        return self.gql(WORKSPACE)["workspaceOrError"].get("locationEntries", [])

    def gql(self, query: str, variables: dict | None = None) -> dict:
        if self.proc.poll() is not None:
            raise DagsterExited(f"dagster dev exited with {self.proc.returncode}; see {self.log}")
        req = urllib.request.Request(f"{self.base}/graphql", method="POST",
                                     data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.load(resp)
        if answer.get("errors"):
            raise RuntimeError(answer["errors"])
        return answer["data"]

    def launch(self, job: str, dataset: str, config: dict) -> str:
        add_partition(dataset)  # what the sensor does when a landing folder appears
        out = self.gql(LAUNCH, {"p": {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": job},
            "runConfigData": config, "executionMetadata": {"tags": [{"key": "dagster/partition", "value": dataset}]}}})
        if out["launchRun"]["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(out)
        return out["launchRun"]["run"]["runId"]

    def run(self, run_id: str) -> dict:
        return self.gql(RUN, {"id": run_id})["runOrError"]

    def wait(self, run_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while (run := self.run(run_id))["status"] not in ("SUCCESS", "FAILURE", "CANCELED"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run['status']} after {timeout:.0f} s")
            time.sleep(1)
        return run

    def wait_step(self, run_id: str, steps: tuple[str, ...], timeout: float) -> str | None:
        """Block until one of `steps` is in progress (its name) or the run has ended (None)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            for s in run["stepStats"]:
                if s["stepKey"] in steps and s["status"] == "IN_PROGRESS":
                    return s["stepKey"]
            if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                return None
            time.sleep(0.05)
        raise TimeoutError(f"none of {steps} started in run {run_id} within {timeout:.0f} s")

    def stop(self) -> None:
        stop(self.proc)


def add_partition(dataset: str) -> None:
    import dagster as dg

    with dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"]) as instance:
        if not instance.has_dynamic_partition("datasets", dataset):
            instance.add_dynamic_partitions("datasets", [dataset])


def pids_with(*needles: str, group: int | None = None) -> list[int]:
    """Processes whose command line contains every needle (Linux /proc); with `group`, only that process group's
    (this soak's own `dagster dev`, not another one on the machine, e.g. a test running beside it)."""
    out = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmd.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid = int(cmd.parent.name)
        if all(n in text for n in needles) and pid != os.getpid():
            try:
                if group is None or os.getpgid(pid) == group:
                    out.append(pid)
            except ProcessLookupError:
                continue
    return out


def run_worker(run_id: str) -> list[int]:
    """The process executing `run_id`: a multiprocessing child of the code server, so its command line does not
    name the run; the `tail -F` processes that capture its logs do, and it is their parent."""
    parents = set()
    for pid in pids_with("tail", run_id):
        try:
            parents.add(int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]))
        except (OSError, IndexError, ValueError):
            continue
    return sorted(parents)


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- the audit: nothing partial, nothing lost ----------------------------------------------------------------

def audit(paths: DataPaths) -> dict:
    """Load every artifact under the data root; count the unloadable ones (must be 0) and stray temp files."""
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import load_file

    bad, counts = [], {"parquet": 0, "pt": 0, "safetensors": 0, "json": 0, "tmp": 0}
    for f in sorted(paths.home.rglob("*")):
        if not f.is_file() or ".dagster" in f.parts:
            continue
        kind = f.suffix.lstrip(".")
        if f.name.startswith(".") and f.name.endswith(".tmp"):  # atomic_path's scratch name: never read as data
            counts["tmp"] += 1
            continue
        if kind not in counts:
            continue
        try:
            if kind == "parquet":
                pq.read_table(f)
            elif kind == "pt":
                torch.load(f, map_location="cpu", weights_only=True)
            elif kind == "safetensors":
                load_file(f)
            else:
                json.loads(f.read_text())
            counts[kind] += 1
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            bad.append(f"{f.relative_to(paths.home)}: {type(exc).__name__}: {str(exc)[:120]}")
    return {"loaded": counts, "unloadable": bad}


def registry_state(paths: DataPaths, dataset: str) -> dict:
    import mlflow

    from imagegen_pipeline.tracking.store import default_tracking_uri

    uri = default_tracking_uri(paths)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name='imagegen-generator-{dataset}'")
    for mv in versions:  # every registered version's weights must load
        local = mlflow.artifacts.download_artifacts(artifact_uri=client.get_model_version_download_uri(
            mv.name, mv.version), tracking_uri=uri)
        from safetensors.torch import load_file

        [weights] = list(Path(local).rglob("*.safetensors")) or [None]
        if weights is None:
            raise AssertionError(f"version {mv.version} has no safetensors file")
        load_file(weights)
    return {"versions": len(versions)}


def completed_trainings(paths: DataPaths, dataset: str) -> int:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(Path(os.environ["DAGSTER_HOME"]))) as instance:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("dcgan_checkpoint"), asset_partitions=[dataset]), limit=1000)
        return len(records.records)


def checkpoint_step(paths: DataPaths, dataset: str) -> int | None:
    import torch

    steps = [torch.load(f, map_location="cpu", weights_only=True).get("step")
             for f in paths.checkpoints(dataset).rglob("latest.pt")]
    return max((s for s in steps if s is not None), default=None)


# ---- the phases ----------------------------------------------------------------------------------------------

@dataclass
class Table:
    rows: list[dict] = field(default_factory=list)

    def add(self, **row) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)


def kill_phase(paths: DataPaths, table: Table, *, kills: int, steps: int, rng: random.Random, log: Path) -> dict:
    """Kill the run worker `kills` times at random moments (cycling through the stages), then the daemon once and
    `dagster dev` as a whole once; after each, launch again; finally a run must finish."""
    dataset, config = "mnist", run_config(steps)
    dagster = Dagster(paths, log)
    targets = [list(PHASES)[k % len(PHASES)] for k in range(kills)] + ["daemon", "dagster dev"]
    killed_runs: list[str] = []
    try:
        while targets:
            target, run_id = targets.pop(0), None
            try:
                run_id = dagster.launch("pipeline_job", dataset, config)
                dagster, faulted = _fault(dagster, target, run_id, paths, table, rng, log)
                if faulted:
                    killed_runs.append(run_id)
            except DagsterExited as exc:  # not one of ours: say so, start it again, try the same fault again
                dagster.stop()
                dagster = Dagster(paths, log)
                status = None
                if run_id is not None:
                    killed_runs.append(run_id)
                    status = dagster.wait(run_id, timeout=300)["status"]
                table.add(fault=f"unplanned: {exc}", run_status_after=status, audit=audit(paths)["unloadable"] or "ok")
                targets.insert(0, target)
        final = dagster.launch("pipeline_job", dataset, config)
        run = dagster.wait(final, timeout=1200)
        statuses = [dagster.run(r)["status"] for r in killed_runs]
    finally:
        dagster.stop()
    trained = completed_trainings(paths, dataset)
    reg = registry_state(paths, dataset)
    files = audit(paths)
    result = {"faults": len(killed_runs), "final_run": run["status"], "killed_runs": len(killed_runs),
              "killed_runs_failed": statuses.count("FAILURE"), "killed_runs_finished": statuses.count("SUCCESS"),
              "checkpoint_step": checkpoint_step(paths, dataset),
              "configured_steps": steps, "completed_trainings": trained, "registry_versions": reg["versions"],
              "unloadable_files": len(files["unloadable"]), "loaded": files["loaded"]}
    table.add(fault="after all kills: a new run", **result)
    return result


def _fault(dagster: Dagster, target: str, run_id: str, paths: DataPaths, table: Table, rng: random.Random,
           log: Path) -> tuple[Dagster, bool]:
    """Wait until `run_id` is in the target's stage, inflict the fault, record how the run ended. Returns the
    Dagster to go on with (a new one when the fault took `dagster dev` down) and whether the fault happened."""
    steps_of = PHASES.get(target, PHASES["dcgan"])
    step = dagster.wait_step(run_id, steps_of, timeout=600)
    if step is None:
        table.add(fault=f"kill run worker in {target}", result="run ended before the step started")
        return dagster, False
    time.sleep(rng.uniform(0.0, 0.2) if target == "ingest" else rng.uniform(0.2, 4.0))
    if target == "daemon":
        group = os.getpgid(dagster.proc.pid)
        kill(pids_with("dagster._daemon", "run", group=group) or pids_with("dagster-daemon", "run", group=group))
        try:  # `dagster dev` shuts everything down when its daemon dies: start it again, as a user would
            dagster.proc.wait(timeout=60)
            dagster.stop()
            dagster = Dagster(paths, log)
        except subprocess.TimeoutExpired:
            pass
    elif target == "dagster dev":
        os.killpg(os.getpgid(dagster.proc.pid), signal.SIGKILL)
        dagster.proc.wait()
        dagster = Dagster(paths, log)
    else:
        workers = run_worker(run_id)
        if not workers:
            raise RuntimeError(f"no run worker found for {run_id}")
        kill(workers)
    t0 = time.monotonic()
    status = dagster.wait(run_id, timeout=300)["status"]
    what = target if target in ("daemon", "dagster dev") else f"run worker in {step}"
    table.add(fault=f"SIGKILL {what}", run_status_after=status, marked_after_s=round(time.monotonic() - t0, 1),
              audit=audit(paths)["unloadable"] or "ok")
    return dagster, True


def disk_full_phase(table: Table, *, size_mb: int, log: Path) -> dict:
    """The data root on a small tmpfs: train until the disk fills; the run fails naming the disk, what was there
    before still loads, and after space is freed the same run completes."""
    mount = Path(tempfile.mkdtemp(prefix="imagegen-full-"))
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        table.add(fault="disk full", result=f"not run: cannot mount a tmpfs ({proc.stderr.strip()[:100]})")
        return {"skipped": proc.stderr.strip()}
    try:
        return _disk_full(mount, table, size_mb=size_mb, log=log)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _disk_full(home: Path, table: Table, *, size_mb: int, log: Path) -> dict:
    paths = DataPaths.from_home(home)
    env = {**os.environ, "IMAGEGEN_HOME": str(home), "DAGSTER_HOME": str(log.parent / ".dagster-disk-full")}

    def imagegen(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "imagegen_pipeline.cli", "--home", str(home), *args], env=env,
                              capture_output=True, text=True, timeout=1800)
        with open(log, "a") as fh:
            fh.write(done.stdout + done.stderr)
        return done

    train = ["train", "mnist", "--ngf", "32", "--ndf", "32", "--checkpoint-every", "25", "--sample-every", "50"]
    for args in (["datasets", "import", "mnist", "--limit", "300"], ["ingest", "mnist"], [*train, "--steps", "50"]):
        assert imagegen(*args).returncode == 0, args
    registered = registry_state(paths, "mnist")["versions"]
    ballast = home / "ballast.bin"  # the disk full but for a few KiB: the next checkpoint cannot be written
    with open(ballast, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
    full = imagegen(*train, "--steps", "100")
    named = f"no space left on {home}" in full.stdout + full.stderr
    during = audit(paths)
    step_kept = checkpoint_step(paths, "mnist")
    versions_kept = registry_state(paths, "mnist")["versions"]
    ballast.unlink()
    again = imagegen(*train, "--steps", "100")
    after = audit(paths)
    result = {"run_on_full_disk": "failed" if full.returncode else "succeeded", "error_names_the_disk": named,
              "unloadable_while_full": len(during["unloadable"]), "checkpoint_kept_at": step_kept,
              "registered_kept": f"{versions_kept} of {registered}",
              "rerun_after_freeing": "succeeded" if again.returncode == 0 else "failed",
              "checkpoint_step": checkpoint_step(paths, "mnist"), "unloadable_at_end": len(after["unloadable"])}
    table.add(fault=f"disk full ({size_mb} MB tmpfs)", **result)
    return result


def concurrency_phase(paths: DataPaths, table: Table, *, steps: int, log: Path) -> dict:
    """Two runs of one dataset at once, and two datasets at once: all finish or one fails clearly, nothing is
    corrupted, and the two trainings never overlap (the `gpu` pool of one)."""
    from imagegen_pipeline.datasets import import_dataset

    if not paths.raw("digits").is_dir():
        import_dataset("mnist", paths, limit=300, name="digits")
    config = run_config(steps)
    dagster = Dagster(paths, log)
    try:
        same = [dagster.launch("pipeline_job", "mnist", config) for _ in range(2)]
        other = dagster.launch("pipeline_job", "digits", config)
        runs = {r: dagster.wait(r, timeout=1800) for r in [*same, other]}
    finally:
        dagster.stop()
    spans = sorted((s["startTime"], s["endTime"]) for r in runs.values() for s in r["stepStats"]
                   if s["stepKey"] == "dcgan_checkpoint" and s["startTime"] and s["endTime"])
    overlaps = sum(1 for a, b in zip(spans, spans[1:]) if b[0] < a[1])
    files = audit(paths)
    result = {"runs": len(runs), "succeeded": sum(r["status"] == "SUCCESS" for r in runs.values()),
              "trainings": len(spans), "overlapping_trainings": overlaps, "unloadable_files": len(files["unloadable"])}
    table.add(fault="2 runs of one dataset + 1 of another at once", **result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10, help="run-worker kills (the daemon and dagster dev: once each)")
    ap.add_argument("--steps", type=int, default=400, help="DCGAN steps per training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=3000, help="MNIST images in the soak's dataset")
    ap.add_argument("--quick", action="store_true", help="only the kills (what CI runs)")
    ap.add_argument("--phases", default="kills,disk,concurrency", help="comma-separated: kills, disk, concurrency")
    ap.add_argument("--home", type=Path, help="scratch data root (default: a new temporary folder)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = ap.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="imagegen-soak-"))
    paths = DataPaths.from_home(home)
    os.environ["IMAGEGEN_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / ".dagster")
    from imagegen_pipeline.datasets import import_dataset

    if not paths.raw("mnist").is_dir():
        import_dataset("mnist", paths, limit=args.images)
    table, rng, t0 = Table(), random.Random(args.seed), time.perf_counter()
    phases = {"kills"} if args.quick else set(args.phases.split(","))
    results: dict = {}
    if "kills" in phases:
        results["kills"] = kill_phase(paths, table, kills=args.kills, steps=args.steps, rng=rng,
                                      log=home / "dagster.log")
    if "disk" in phases:
        results["disk_full"] = disk_full_phase(table, size_mb=128, log=home / "disk-full.log")
    if "concurrency" in phases:
        results["concurrency"] = concurrency_phase(paths, table, steps=args.steps, log=home / "dagster-2.log")
    results["seconds"] = round(time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": table.rows, **results}, indent=2, default=str))
    ok = True
    if k := results.get("kills"):
        ok &= (k["final_run"] == "SUCCESS" and  # every killed run ended: none is left STARTED
               k["killed_runs_failed"] + k["killed_runs_finished"] == k["killed_runs"] and
               k["checkpoint_step"] == k["configured_steps"] and
               k["completed_trainings"] == k["registry_versions"] and k["unloadable_files"] == 0)
    if (d := results.get("disk_full")) and "skipped" not in d:
        ok &= (d["run_on_full_disk"] == "failed" and d["error_names_the_disk"] and d["unloadable_while_full"] == 0
               and d["rerun_after_freeing"] == "succeeded" and d["unloadable_at_end"] == 0)
    if c := results.get("concurrency"):
        ok &= c["overlapping_trainings"] == 0 and c["unloadable_files"] == 0
    print(f"\nsoak {'PASSED' if ok else 'FAILED'} in {results['seconds']} s; table in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
