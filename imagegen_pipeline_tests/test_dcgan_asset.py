"""dcgan_checkpoint through real Dagster runs: trains, registers a pyfunc generator, resumes after SIGKILL."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from imagegen_pipeline.datasets import import_dataset
from imagegen_pipeline.defs.dcgan import dcgan_checkpoint
from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker, TrainingLauncher
from imagegen_pipeline.ml.checkpoint import load_checkpoint
from imagegen_pipeline_tests.conftest import run_ingest

TINY_GAN = {"device": "cpu", "steps": 6, "batch_size": 16, "ngf": 8, "ndf": 8, "checkpoint_every": 3,
            "sample_every": 3, "log_every": 2, "ema_start_step": 2}


@pytest.fixture
def mnist_shards(paths, instance, mlflow_uri):
    import_dataset("mnist", paths, limit=200)
    assert run_ingest(instance, "mnist").success
    return paths


def train(paths, instance, **config) -> dg.ExecuteInProcessResult:
    result = dg.materialize([dcgan_checkpoint], partition_key="mnist", instance=instance, raise_on_error=False,
                            resources={"storage": ImagegenStorage(home=str(paths.home)),
                                       "mlflow_tracker": MlflowTracker(), "training": TrainingLauncher()},
                            run_config={"ops": {"dcgan_checkpoint": {"config": {**TINY_GAN, **config}}}})
    return result


def metadata(result) -> dict:
    [mat] = result.asset_materializations_for_node("dcgan_checkpoint")
    return {k: v.value for k, v in mat.metadata.items()}


def test_trained_generator_is_registered_and_generates_by_label_and_seed(mnist_shards, instance, mlflow_uri,
                                                                         monkeypatch):
    """The EMA generator loads back by version and alias and gives the same images for the same seed; the run
    records the shards it read as its input dataset and samples the machine's load."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    result = train(mnist_shards, instance)
    assert result.success
    meta = metadata(result)
    assert meta["steps"] == 6 and meta["conditioning"] == "class" and meta["resumed_from_step"] == 0
    assert meta["registered_model"] == "imagegen-generator-mnist v1 (@candidate)"
    assert "data:image/png;base64," in meta["samples"] and "data:image/png;base64," in meta["loss_curves"]
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias("imagegen-generator-mnist", "candidate")
    assert mv.tags["imagegen.shards"] and mv.tags["imagegen.conditioning"] == "class"
    run = client.get_run(mv.run_id)
    assert math.isfinite(run.data.metrics["loss_d"]) and math.isfinite(run.data.metrics["loss_g"])  # logged, finite
    assert len(client.get_metric_history(run.info.run_id, "loss_g")) == 3  # log_every=2 over 6 steps
    assert "checkpoint" in {a.path for a in client.list_artifacts(run.info.run_id)}
    [shards] = [d.dataset for d in run.inputs.dataset_inputs]
    assert shards.name == "mnist-shards" and shards.digest == mv.tags["imagegen.shards"][:36]
    assert str(mnist_shards.shards("mnist")) in shards.source
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics)

    request = pd.DataFrame({"label": ["3", "7"], "seed": [11, 11], "count": [4, 2]})
    for uri in ("models:/imagegen-generator-mnist/1", "models:/imagegen-generator-mnist@candidate"):
        model = mlflow.pyfunc.load_model(uri)
        images = model.predict(request, params={"format": "array"})
        assert images.shape == (6, 32, 32, 1) and images.dtype == np.uint8
        again = model.predict(request, params={"format": "array"})
        np.testing.assert_array_equal(images, again)
        assert not np.array_equal(images[0], images[1])  # seeds 11 and 12 differ
        assert not np.array_equal(images[0], images[4])  # same seed, other label
    pngs = model.predict(request.head(1))
    assert list(pngs.columns) == ["label", "seed", "png_base64"] and pngs["seed"].tolist() == [11, 12, 13, 14]
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(pngs["png_base64"][0]))))
    np.testing.assert_array_equal(first, images[0, ..., 0])
    with pytest.raises(Exception, match="unknown label"):
        model.predict(pd.DataFrame({"label": ["cat"], "seed": [0], "count": [1]}))

    again = train(mnist_shards, instance)  # a finished run is not resumed: a new version
    assert again.success and metadata(again)["registered_model"] == "imagegen-generator-mnist v2 (@candidate)"


def train_until_first_checkpoint(paths, tmp_path, steps: int, **env) -> tuple[subprocess.Popen, list[str], dict]:
    """`imagegen train mnist` in a child process, returned once its first checkpoint (every 10 steps) is on disk;
    with the command and environment to run it again."""
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"ops": {"dcgan_checkpoint": {"config": {
        **TINY_GAN, "steps": steps, "checkpoint_every": 10, "sample_every": steps // 2, "log_every": 10}}}}))
    env = {**os.environ, "IMAGEGEN_HOME": str(paths.home), "DAGSTER_HOME": str(paths.home / ".dagster"), **env}
    cmd = [sys.executable, "-m", "imagegen_pipeline.cli", "train", "mnist", "--config", str(cfg)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and not list(paths.checkpoints("mnist").glob("dcgan-*/latest.pt")):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    return proc, cmd, env


@pytest.mark.slow
def test_kill_minus_nine_then_rematerialize_resumes_to_the_same_final_step(mnist_shards, tmp_path):
    """SIGKILL during training loses at most the steps since the last checkpoint; the rerun finishes the job."""
    paths = mnist_shards
    proc, cmd, env = train_until_first_checkpoint(paths, tmp_path, 200)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [ckpt] = list(paths.checkpoints("mnist").glob("dcgan-*/latest.pt"))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "had died with its process" in done.stdout  # the ghost run was failed and its gpu-pool slot freed
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("dcgan:"))
    assert line.startswith("dcgan: 200 steps (resumed from ")
    resumed = int(line.split("resumed from ")[1].split(")")[0])
    assert 10 <= resumed < 200 and resumed % 10 == 0


def test_init_from_a_model_whose_checkpoint_the_store_lost_names_it_and_the_fix(mnist_shards, instance,
                                                                                mlflow_uri):
    """Issue 14.4: a registered source whose logged checkpoint is gone from the artifact store failed with
    MLflow's raw download error. It is now MissingArtifact naming the version, the run and what to do."""
    paths = mnist_shards
    assert train(paths, instance).success
    [logged] = list((paths.mlruns / "artifacts").rglob("checkpoint/latest.pt"))
    logged.unlink()
    import_dataset("mnist", paths, name="digits", limit=120)
    assert run_ingest(instance, "digits").success
    result = dg.materialize([dcgan_checkpoint], partition_key="digits", instance=instance, raise_on_error=False,
                            resources={"storage": ImagegenStorage(home=str(paths.home)),
                                       "mlflow_tracker": MlflowTracker(), "training": TrainingLauncher()},
                            run_config={"ops": {"dcgan_checkpoint": {"config": {**TINY_GAN, "init_from": "mnist"}}}})
    assert not result.success
    error = str(result.failure_data_for_node("dcgan_checkpoint").error)
    assert "MissingArtifact" in error and "imagegen-generator-mnist v1 was registered from MLflow run" in error
    assert "cannot be read from the artifact store" in error and "train 'mnist' again" in error


@pytest.mark.slow
def test_init_from_starts_from_the_source_champion_checkpoint_not_the_newest_local_one(mnist_shards, instance,
                                                                                         mlflow_uri):
    """Issue 13.11: init_from took the newest checkpoint folder by mtime; the README promises the registered
    version. With v1 as champion and v2 trained later, a transfer run starts from v1's weights, says so, and
    the source version is part of its run key."""
    paths = mnist_shards
    train(paths, instance)
    train(paths, instance, seed=1)  # v2: newer on disk, another experiment (its own run folder)
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("imagegen-generator-mnist", "champion", "1")
    import_dataset("mnist", paths, name="digits", limit=120)
    assert run_ingest(instance, "digits").success
    resources = {"storage": ImagegenStorage(home=str(paths.home)), "mlflow_tracker": MlflowTracker(), "training": TrainingLauncher()}
    config = {**TINY_GAN, "steps": 0, "init_from": "mnist"}
    result = dg.materialize([dcgan_checkpoint], partition_key="digits", instance=instance, resources=resources,
                            run_config={"ops": {"dcgan_checkpoint": {"config": config}}})
    assert result.success
    v1 = load_checkpoint(Path(client.get_model_version("imagegen-generator-mnist", "1").tags["imagegen.checkpoint"]))
    [run_dir] = list(paths.checkpoints("digits").glob("dcgan-*"))
    started = load_checkpoint(run_dir / "latest.pt")
    assert all(torch.equal(started["G"][k], v) for k, v in v1["G"].items())
    assert started["config"]["extra"]["init_from"] == "imagegen-generator-mnist v1"


def test_a_version_is_registered_from_its_own_run_even_while_another_writer_rewrites_the_shared_export(
        mnist_shards, instance, mlflow_uri, tmp_path):
    """Issue 28.4: the stage registered models/<ds>/generator.safetensors, a file every run of the dataset writes.
    Another run's weights landing there between this run's copy and its registration became this run's version.
    Here another writer keeps putting foreign weights in that shared file while this run trains and registers:
    the registered version still holds the weights of its own run's export."""
    import threading

    from imagegen_pipeline.ml.dcgan.export import WEIGHTS_FILE
    from imagegen_pipeline.tracking.registry import download_model_artifact

    paths = mnist_shards
    assert train(paths, instance, seed=1).success  # the other run's weights, then kept aside
    shared = paths.models("mnist") / WEIGHTS_FILE
    foreign = shared.read_bytes()
    stop = threading.Event()

    def other_writer() -> None:  # as a concurrent run of the same dataset would: its copy, atomically
        while not stop.is_set():
            try:
                if shared.read_bytes() != foreign:
                    (tmp_path / "other.tmp").write_bytes(foreign)
                    os.replace(tmp_path / "other.tmp", shared)
            except FileNotFoundError:
                pass
            time.sleep(0.001)

    writer = threading.Thread(target=other_writer, daemon=True)
    writer.start()
    try:
        result = train(paths, instance, seed=2)
    finally:
        stop.set()
        writer.join()
    assert result.success
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    mv = client.get_model_version("imagegen-generator-mnist", "2")
    own = Path(mv.tags["imagegen.checkpoint"]).parent / WEIGHTS_FILE  # the run folder's own export
    registered = download_model_artifact("imagegen-generator-mnist", "2", "generator", tmp_path / "dl")
    assert registered.read_bytes() == own.read_bytes()
    assert registered.read_bytes() != foreign


def killed_after_last_checkpoint(paths) -> Path:
    """The run folder as a kill between the final checkpoint and registration leaves it: no registered.json."""
    from imagegen_pipeline.stages.dcgan import DONE_FILE

    [done] = list(paths.checkpoints("mnist").glob(f"dcgan-*/{DONE_FILE}"))
    done.unlink()
    return done.parent


def test_raising_steps_after_a_kill_resumes_the_same_run_folder(mnist_shards, instance):
    """Issue 28.5: the run folder's key hashed `steps` too, although RESUMABLE_CHANGES lets a resume change it,
    so asking a killed run for more steps started again from step 0 in a new folder. Another learning rate is
    another experiment: a folder of its own."""
    paths = mnist_shards
    assert train(paths, instance).success
    folder = killed_after_last_checkpoint(paths)
    longer = train(paths, instance, steps=9, log_every=3)
    assert longer.success
    assert (metadata(longer)["resumed_from_step"], metadata(longer)["steps"]) == (6, 9)
    assert list(paths.checkpoints("mnist").glob("dcgan-*")) == [folder]
    killed_after_last_checkpoint(paths)
    other = train(paths, instance, steps=9, lr_g=1e-4)
    assert other.success and metadata(other)["resumed_from_step"] == 0
    assert len(list(paths.checkpoints("mnist").glob("dcgan-*"))) == 2


def test_a_feature_head_run_resumes_only_against_the_same_feature_network(mnist_shards, instance):
    """Issue 28.5: the key left the feature network out, so a killed feature_head run resumed against a re-trained
    extractor, its D head trained on one network's embeddings and continued on another's. Now the extractor's
    weights are part of the key: the same file resumes, another file starts a run of its own."""
    from imagegen_pipeline.ml.extractor import build_extractor, save_extractor
    from imagegen_pipeline.stages.artifacts import EXTRACTOR_FILE

    paths = mnist_shards
    extractor = paths.models("mnist") / EXTRACTOR_FILE
    torch.manual_seed(0)
    save_extractor(extractor, build_extractor(10, pretrained=False, input_size=32))
    head = {"feature_head": True, "steps": 2, "checkpoint_every": 2, "sample_every": 2, "ema_start_step": 0}
    assert train(paths, instance, **head).success
    folder = killed_after_last_checkpoint(paths)
    same = train(paths, instance, **{**head, "steps": 4})
    assert same.success and metadata(same)["resumed_from_step"] == 2  # same network, more steps: resumed
    assert list(paths.checkpoints("mnist").glob("dcgan-*")) == [folder]
    killed_after_last_checkpoint(paths)
    torch.manual_seed(1)
    save_extractor(extractor, build_extractor(10, pretrained=False, input_size=32))  # feature_extractor again
    retrained = train(paths, instance, **{**head, "steps": 4})
    assert retrained.success and metadata(retrained)["resumed_from_step"] == 0
    assert len(list(paths.checkpoints("mnist").glob("dcgan-*"))) == 2


def test_a_second_trainer_of_the_same_run_folder_refuses_and_names_the_one_training(mnist_shards, instance,
                                                                                      tmp_path):
    """Issue 28.3: `imagegen train` runs in its own process, outside the team's run queue, and nothing locked the
    run folder, so it trained beside another run of the same experiment into the same folder. The folder is now
    locked while a run trains it: a second trainer refuses and names the holder (host, pid, Dagster run)."""
    import socket

    paths = mnist_shards
    proc, _, _ = train_until_first_checkpoint(paths, tmp_path, 2000)  # a real second process, mid-training
    try:
        second = train(paths, instance)  # the same experiment: the same run folder
        assert not second.success
        error = str(second.failure_data_for_node("dcgan_checkpoint").error)
        [folder] = list(paths.checkpoints("mnist").glob("dcgan-*"))
        with dg.DagsterInstance.from_config(str(paths.home / ".dagster")) as theirs:
            [their_run] = theirs.get_runs()
        assert (f"mnist: the run folder {folder} is busy: another process (pid {proc.pid} on "
                f"{socket.gethostname()}, Dagster run {their_run.run_id}) holds ") in error
        assert proc.poll() is None  # the first trainer goes on undisturbed
    finally:
        proc.kill()
        proc.wait()
