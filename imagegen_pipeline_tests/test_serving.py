"""`imagegen serve`: the real `mlflow models serve` over the project's store, answering POST /invocations."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from PIL import Image

from imagegen_pipeline.cli import main
from imagegen_pipeline.net import free_port
from imagegen_pipeline.ui import stop, wait_http
from imagegen_pipeline_tests.test_dcgan_asset import mnist_shards, train  # noqa: F401  (fixture)

REQUEST = {"dataframe_split": {"columns": ["label", "seed", "count"], "data": [["3", 7, 2]]},
           "params": {"format": "png"}}


def post(url: str, body: dict, *, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_served_champion_returns_the_same_pngs_for_the_same_seed_and_json_errors_for_bad_input(
        mnist_shards, instance, mlflow_uri, capsys):
    """POST /invocations on `imagegen serve mnist` gives `count` 32x32 PNGs per row, byte-identical on repeat;
    an unknown label is a JSON error, not a hang or a dead server."""
    paths = mnist_shards
    assert main(["--home", str(paths.home), "serve", "mnist", "--port", "1"]) == 2  # nothing registered yet
    assert "no models:/imagegen-generator-mnist@champion" in capsys.readouterr().err
    assert train(paths, instance).success
    mlflow.MlflowClient(tracking_uri=mlflow_uri).set_registered_model_alias("imagegen-generator-mnist", "champion", "1")

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IMAGEGEN_HOME": str(paths.home)}
    log = paths.home / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "imagegen_pipeline.cli", "serve", "mnist", "--port", str(port)],
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", timeout=90, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
        url = f"http://127.0.0.1:{port}/invocations"
        status, first = post(url, REQUEST)
        assert status == 200, first
        rows = first["predictions"]
        assert [(r["label"], r["seed"]) for r in rows] == [("3", 7), ("3", 8)]
        images = [Image.open(io.BytesIO(base64.b64decode(r["png_base64"]))) for r in rows]
        assert [(im.format, im.size) for im in images] == [("PNG", (32, 32))] * 2
        assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))  # seeds 7 and 8 differ
        assert post(url, REQUEST) == (200, first)  # same request, same bytes

        status, error = post(url, {**REQUEST, "dataframe_split": {"columns": ["label", "seed", "count"],
                                                                  "data": [["cat", 7, 2]]}}, timeout=30)
        assert 400 <= status < 600 and error["error_code"] == "BAD_REQUEST", (status, error)
        assert "unknown label 'cat'" in error.get("stack_trace", "") + error["message"], error
        flood = {"dataframe_split": {"columns": ["label", "seed", "count"], "data": [["3", i, 256]
                                                                                     for i in range(200)]}}
        status, error = post(url, flood, timeout=30)  # 51,200 images: refused before any is drawn
        assert status == 400 and "asks for 51200 images; at most 1024" in error["message"] + error.get(
            "stack_trace", ""), (status, error)
        assert post(url, REQUEST) == (200, first)  # still serving
    finally:
        stop(proc, timeout=10)
    assert "serving imagegen-generator-mnist v1 (@champion)" in log.read_text()


class _Constant(mlflow.pyfunc.PythonModel):
    """The smallest pyfunc the registry can hold: these tests are about which version loads, not what it draws."""

    def predict(self, context, model_input, params=None):
        return model_input


def _register_tiny(paths, name: str) -> str:
    """A real registered version of `name`, its artifacts in the test's data root; its version number."""
    from imagegen_pipeline.tracking.store import artifact_root, ensure_experiment

    exp = ensure_experiment("mnist", artifacts=artifact_root(paths))
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(), pip_requirements=[],
                                       registered_model_name=name)
    return str(info.registered_model_version)


def test_a_champion_whose_artifact_is_lost_is_an_error_naming_it_not_the_candidate_served(paths, mlflow_uri,
                                                                                            capsys):
    """Issue 28.10: any error on @champion (a lost artifact, a locked store) fell back to @candidate, which may be
    a rejected model, and the CLI said "no champion yet". Only a missing alias falls back; this names the URI."""
    import shutil

    from imagegen_pipeline.tracking.registry import load_registered
    from imagegen_pipeline.tracking.store import use_store

    name = "imagegen-generator-mnist"
    use_store(mlflow_uri)
    champion, candidate = _register_tiny(paths, name), _register_tiny(paths, name)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, "champion", champion)
    client.set_registered_model_alias(name, "candidate", candidate)
    lost = client.get_model_version_download_uri(name, champion).removeprefix("file://")
    shutil.rmtree(lost)  # the artifact store lost the champion's files
    with pytest.raises(RuntimeError, match=rf"models:/{name}@champion \(v{champion}\) cannot be loaded"):
        load_registered(name)
    capsys.readouterr()
    assert main(["--home", str(paths.home), "generate", "--dataset", "mnist", "--label", "3", "--out",
                 str(paths.home / "out.png")]) == 2
    err = capsys.readouterr().err
    assert f"models:/{name}@champion (v{champion}) cannot be loaded" in err and "no champion" not in err
    assert not (paths.home / "out.png").exists()


def test_only_a_missing_champion_alias_falls_back_to_the_candidate_said_in_one_line(paths, mlflow_uri, capsys):
    """Issue 28.10: before evaluation promoted anything, @candidate is served, and stderr says so in one line."""
    from imagegen_pipeline.tracking.registry import load_registered
    from imagegen_pipeline.tracking.store import use_store

    name = "imagegen-generator-mnist"
    use_store(mlflow_uri)
    candidate = _register_tiny(paths, name)
    mlflow.MlflowClient().set_registered_model_alias(name, "candidate", candidate)
    capsys.readouterr()
    loaded = load_registered(name)
    assert (loaded.version, loaded.description) == (candidate, f"{name} v{candidate} (@candidate)")
    assert capsys.readouterr().err.splitlines() == [
        f"note: no models:/{name}@champion yet (evaluation promotes it); using models:/{name}@candidate"]
