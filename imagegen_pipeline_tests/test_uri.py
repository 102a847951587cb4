"""Issue 17.3: shards and checkpoints through pyarrow.fs URIs (s3:// on a cluster), tested on the local file
system through the same interface (file://)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from imagegen_pipeline import uri
from imagegen_pipeline.ml.checkpoint import CorruptCheckpoint, load_checkpoint, save_checkpoint
from imagegen_pipeline.ml.shard_reader import ShardReader
from imagegen_pipeline.paths import REPO_ROOT
from imagegen_pipeline.stages.common import shards_stamp
from imagegen_pipeline_tests.test_dcgan_core import cli, sub_env, write_tiny_shards


def test_shards_read_through_a_uri_are_the_shards_read_from_the_folder(tmp_path):
    shards = write_tiny_shards(tmp_path)
    by_path, by_uri = ShardReader(shards), ShardReader(shards.as_uri())
    assert by_uri.description == by_path.description and shards_stamp(by_uri) == shards_stamp(by_path)
    assert all(str(f).startswith("file://") for f in by_uri.files("train")) and by_uri.num_rows("train") > 20
    for split in by_path.description["splits"]:
        images, labels = by_path.load_split(split)
        images_u, labels_u = by_uri.load_split(split)
        assert torch.equal(images, images_u) and torch.equal(labels, labels_u)
        assert by_uri.read_column(split, "sha256") == by_path.read_column(split, "sha256")
    with pytest.raises(FileNotFoundError, match="materialize image_shards"):
        ShardReader((tmp_path / "nothing").as_uri())


def test_a_checkpoint_round_trips_through_a_uri_and_a_damaged_one_is_named(tmp_path):
    target = (tmp_path / "bucket" / "run" / "latest.pt").as_uri()
    state = {"step": 7, "G": {"w": torch.arange(6.0).view(2, 3)}, "config": {"lr": 1e-3}}
    assert save_checkpoint(target, state) == target
    back = load_checkpoint(target)
    assert back["step"] == 7 and torch.equal(back["G"]["w"], state["G"]["w"]) and back["format_version"] == 1
    assert [p.name for p in (tmp_path / "bucket" / "run").iterdir()] == ["latest.pt"]  # no temp file left
    uri.write_bytes(target, uri.read_bytes(target)[:100])
    with pytest.raises(CorruptCheckpoint, match="latest.pt cannot be read"):
        load_checkpoint(target)
    with pytest.raises(FileNotFoundError):
        load_checkpoint((tmp_path / "none.pt").as_uri())


def test_uri_join_keeps_the_query_and_paths_stay_paths(tmp_path):
    assert uri.join("s3://bucket/shards/mnist?region=eu-west-1", "train-0.parquet") == \
        "s3://bucket/shards/mnist/train-0.parquet?region=eu-west-1"
    assert uri.join(tmp_path, "a", "b") == tmp_path / "a" / "b"
    assert not uri.exists((tmp_path / "x").as_uri())
    uri.write_bytes((tmp_path / "d" / "x").as_uri(), b"1")
    assert uri.exists((tmp_path / "d" / "x").as_uri()) and uri.read_bytes(tmp_path / "d" / "x") == b"1"


def test_training_reads_its_shards_from_a_uri(tmp_path):
    shards = write_tiny_shards(tmp_path)
    done = subprocess.run([sys.executable, *cli(shards.as_uri(), tmp_path / "run", "--steps", "2",
                                                 "--checkpoint-every", "100", "--log-every", "1")],
                          cwd=REPO_ROOT, env=sub_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("{")))
    assert summary["final_step"] == 2
    assert load_checkpoint(tmp_path / "run" / "latest.pt")["config"]["extra"]["shards"] == shards.as_uri()


def test_image_shards_mirror_to_the_shards_uri_and_training_reads_them_there(paths, instance, mlflow_uri,
                                                                             monkeypatch, tmp_path):
    """$IMAGEGEN_SHARDS_URI: image_shards mirrors each generation there, and the stages read it from there (the
    local shard folder is deleted first, so training can only have read the mirror)."""
    import shutil

    import dagster as dg
    import mlflow

    from imagegen_pipeline.datasets import import_dataset
    from imagegen_pipeline.defs.dcgan import dcgan_checkpoint
    from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker, TrainingLauncher
    from imagegen_pipeline_tests.conftest import run_ingest
    from imagegen_pipeline_tests.test_dcgan_asset import TINY_GAN

    remote = (tmp_path / "bucket" / "shards").as_uri()
    monkeypatch.setenv("IMAGEGEN_SHARDS_URI", remote)
    import_dataset("mnist", paths, limit=120)
    assert run_ingest(instance, "mnist").success
    mirror, local = ShardReader(f"{remote}/mnist"), ShardReader(paths.shards("mnist"))
    assert mirror.description == local.description
    assert torch.equal(mirror.load_split("train")[0], local.load_split("train")[0])
    shutil.rmtree(paths.shards("mnist"))
    result = dg.materialize([dcgan_checkpoint], partition_key="mnist", instance=instance, raise_on_error=False,
                            resources={"storage": ImagegenStorage(home=str(paths.home)),
                                       "mlflow_tracker": MlflowTracker(), "training": TrainingLauncher()},
                            run_config={"ops": {"dcgan_checkpoint": {"config": TINY_GAN}}})
    assert result.success
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    [run] = client.search_runs(client.get_experiment_by_name("imagegen-mnist").experiment_id)
    [shards] = [d.dataset for d in run.inputs.dataset_inputs]
    assert json.loads(shards.source)["uri"] == f"{remote}/mnist"
