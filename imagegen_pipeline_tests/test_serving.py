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
