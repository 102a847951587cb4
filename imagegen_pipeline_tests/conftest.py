"""Fixtures: a private data root and Dagster instance per test, and helpers to make real image files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from imagegen_pipeline.definitions import defs
from imagegen_pipeline.paths import DataPaths

pytest_plugins = ["imagegen_pipeline_tests.ci_skips"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with a test marked `slow` first, each module kept whole (stable order otherwise): `make test`'s
    parallel workers take a module at a time (--dist loadfile, so a module's shared fixtures are built once),
    and the minute-long modules then start together on different workers instead of ending the run alone."""
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)


def _cores_per_worker() -> int:
    """This process's share of the cores: all of them, or 1 of `make test`'s parallel workers' equal shares."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


def pytest_configure(config: pytest.Config) -> None:
    """One parallel worker per core: each worker's torch gets its share of the cores, not all of them (two
    workers with two OpenMP threads each on 2 cores ran a 50 s training test for over 9 minutes)."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        import torch

        torch.set_num_threads(_cores_per_worker())
        os.environ.setdefault("OMP_NUM_THREADS", str(_cores_per_worker()))  # the runs, servers it starts too

# One decoding process keeps tiny tests fast; the parallel path has its own test.
SERIAL = {"ops": {"raw_images": {"config": {"workers": 1}}, "image_shards": {"config": {"workers": 1}}}}


def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(n, _cores_per_worker()))
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest single-threaded, and a busy 2-core box must not be oversubscribed."""
    yield from _torch_threads(1)


@pytest.fixture
def two_threads():
    """Real-sized training steps (MNIST at demo width) use both cores (this worker's share under `make test`)."""
    yield from _torch_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _shared_detector_cache(tmp_path_factory: pytest.TempPathFactory):
    """One detector cache for the session (`$IMAGEGEN_DETECTOR_CACHE`, content-keyed, so sharing is exact): each
    test's data root is new, and without it every evaluation scored the same real MNIST images again (3.6 s each).
    Servers and runs the tests start inherit it."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("IMAGEGEN_DETECTOR_CACHE", str(tmp_path_factory.mktemp("detector-cache")))
        yield


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataPaths:
    monkeypatch.setenv("IMAGEGEN_HOME", str(tmp_path))
    return DataPaths.from_home(tmp_path)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def run_ingest(instance: dg.DagsterInstance, dataset: str, run_config: dict | None = None) -> dg.ExecuteInProcessResult:
    """Run `ingest_job` for one dataset partition, as the CLI, the sensor and the UI do."""
    if not instance.has_dynamic_partition("datasets", dataset):
        instance.add_dynamic_partitions("datasets", [dataset])
    return defs.resolve_job_def("ingest_job").execute_in_process(
        partition_key=dataset, instance=instance, run_config=run_config or SERIAL, raise_on_error=False)


def materialization_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [mat] = [m for m in result.asset_materializations_for_node(asset)]
    return {k: v.value for k, v in mat.metadata.items()}


def image_bytes(fmt: str = "PNG", *, size=(16, 16), mode="RGB", color=(200, 30, 30), **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt, **save)
    return buf.getvalue()


def noise_png(seed: int, size=(16, 16), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def failing_npm(bin_dir: Path) -> Path:
    """Put an `npm` into `bin_dir` that records its arguments in the returned file and fails as offline: put
    first on PATH, importers never reach the registry, and a test sees whether they tried."""
    calls = bin_dir / "npm-calls.txt"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "npm").write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\necho "npm error network offline" >&2\nexit 1\n')
    (bin_dir / "npm").chmod(0o755)
    return calls


@pytest.fixture
def no_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No registry for this test (see failing_npm); the file of recorded npm calls."""
    calls = failing_npm(tmp_path / "fake-npm")
    monkeypatch.setenv("PATH", f"{tmp_path / 'fake-npm'}{os.pathsep}{os.environ.get('PATH', '')}")
    return calls


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite store with its tables created once (migrations take seconds); tests get copies."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_uri(paths: DataPaths, _mlflow_template: Path) -> str:
    """A fresh MLflow store under the test's data root, where the assets' default would put it."""
    import shutil

    paths.mlruns.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_mlflow_template, paths.mlruns / "mlflow.db")
    return f"sqlite:///{paths.mlruns / 'mlflow.db'}"
