"""Start and stop the two UIs: Dagster (`dagster dev`: webserver + daemon) and the MLflow tracking server.

Each server gets its own process group, so stopping it also stops the processes it spawned (the Dagster
daemon and code server, MLflow's uvicorn worker). `imagegen ui` and the browser tests share these helpers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from imagegen_pipeline.net import LOOPBACK, url_for, warn_if_exposed
from imagegen_pipeline.paths import REPO_ROOT, DataPaths


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@contextlib.contextmanager
def _children_get_default_sigint():
    """`dagster dev` maps SIGTERM to its SIGINT handler, so a child that inherits an ignored SIGINT (we were
    started as a background job) would ignore SIGTERM too. A handler set here is reset to the default at exec."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, lambda *_: None)  # still ignored here
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_group(argv: list[str], *, env: dict[str, str], cwd: Path, log: Path | None) -> subprocess.Popen:
    """Start `argv` as the leader of a new process group; output to `log` (appended) or to our terminal."""
    with _children_get_default_sigint(), contextlib.ExitStack() as files:
        out = files.enter_context(open(log, "ab")) if log else None  # the child keeps its own copy
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT if out else None, start_new_session=True)


def start_dagster(paths: DataPaths, *, host: str = LOOPBACK, port: int = 3000, mlflow_url: str | None = None,
                  log: Path | None = None) -> subprocess.Popen:
    """`dagster dev` on host:port for this data root, in its own process group.

    $DAGSTER_HOME is the one `ensure_dagster_home` picks (default `<home>/.dagster`, seeded with our
    dagster.yaml); `IMAGEGEN_MLFLOW_UI` makes the assets' metadata links point at our MLflow UI."""
    from imagegen_pipeline.dagster_home import ensure_dagster_home

    dagster_home = ensure_dagster_home(paths)
    env = {**os.environ, "IMAGEGEN_HOME": str(paths.home), "DAGSTER_HOME": str(dagster_home)}
    if mlflow_url:
        env["IMAGEGEN_MLFLOW_UI"] = mlflow_url
    argv = [venv_bin("dagster"), "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", host, "-p", str(port)]
    return start_group(argv, env=env, cwd=REPO_ROOT, log=log)


def start_mlflow(paths: DataPaths, *, host: str = LOOPBACK, port: int = 5000,
                 log: Path | None = None) -> subprocess.Popen:
    """`mlflow server` over the pipeline's store (`<home>/mlruns/mlflow.db`, artifacts in `<home>/mlruns/artifacts`).

    One worker and no job runner (MLflow's GenAI job queue spawns its own consumers): a UI for one person."""
    from imagegen_pipeline.tracking.store import artifact_root, default_tracking_uri

    artifacts = artifact_root(paths)
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                              "false")}
    argv = [venv_bin("mlflow"), "server", "--backend-store-uri", default_tracking_uri(paths),
            "--artifacts-destination", artifacts.resolve().as_uri(), "--host", host, "--port", str(port),
            "--workers", "1"]
    return start_group(argv, env=env, cwd=paths.home, log=log)


def wait_http(url: str, *, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Return once `url` answers 200; fail early if `proc` (the server) exits, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:2]} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.5)


def stop(*procs: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM each server's process group (webserver, daemon, code server, workers) at once, wait up to
    `timeout` seconds for them to shut down, then SIGKILL whatever is left of the groups."""
    groups = []
    for proc in procs:
        try:
            pgid = os.getpgid(proc.pid)
        except ProcessLookupError:  # already gone (and reaped)
            continue
        if pgid == os.getpgid(0):  # not started in its own group: never signal our own
            proc.terminate()
            continue
        groups.append(pgid)
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
        for proc in procs:
            proc.poll()  # reap the leaders, so their group can empty
        time.sleep(0.2)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # only a leader outside its own group can get here
            proc.kill()
            proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - the id was reused by someone else's process
        return False


def serve(paths: DataPaths, *, host: str = LOOPBACK, port: int = 3000, mlflow_port: int = 5000) -> int:
    """Run both UIs until Ctrl-C (or SIGTERM), or until one of them exits; then stop both."""
    dagster_url, mlflow_url = url_for(host, port), url_for(host, mlflow_port)
    procs: dict[str, subprocess.Popen] = {}

    def _terminate(_signum, _frame):
        raise KeyboardInterrupt

    warn_if_exposed(host, "the Dagster and MLflow UIs")
    previous_term, previous_int = signal.signal(signal.SIGTERM, _terminate), signal.getsignal(signal.SIGINT)
    try:
        procs["MLflow"] = start_mlflow(paths, host=host, port=mlflow_port)
        procs["Dagster"] = start_dagster(paths, host=host, port=port, mlflow_url=mlflow_url)
        print(f"Dagster UI on {dagster_url}  (DAGSTER_HOME={os.environ['DAGSTER_HOME']})\n"
              f"MLflow UI on {mlflow_url}  (store {paths.mlruns / 'mlflow.db'})\n"
              "Ctrl-C stops both.", flush=True)
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"{name} UI exited with {proc.returncode}; stopping the other", file=sys.stderr, flush=True)
                    return proc.returncode or 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping Dagster and MLflow ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        try:
            stop(*procs.values())
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
