"""raw_images / image_shards through real Dagster runs: incremental re-ingest, shards, checks, reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imagegen_pipeline.datasets import import_dataset
from imagegen_pipeline.ingest import checks
from imagegen_pipeline.ingest.manifest import read_manifest
from imagegen_pipeline.ingest.shards import split_of
from imagegen_pipeline.ml.shard_reader import CorruptShard, ShardReader, to_float
from imagegen_pipeline_tests.conftest import materialization_metadata, noise_png, run_ingest, write


@pytest.fixture
def mnist_slice(paths):
    import_dataset("mnist", paths, limit=200)
    return paths


def test_ingest_writes_manifest_shards_and_passes_checks(mnist_slice, instance):
    paths = mnist_slice
    result = run_ingest(instance, "mnist")
    assert result.success
    assert sorted((c.check_name, c.passed) for c in result.get_asset_check_evaluations()) == [
        ("manifest_accounts_for_every_file", True), ("shard_pixels_match_description", True),
        ("shard_rows_match_manifest", True)]
    meta = materialization_metadata(result, "raw_images")
    assert (meta["accepted"], meta["quarantined"], meta["dagster/row_count"]) == (200, 0, 200)
    assert "data:image/png;base64," in meta["preview"] and "| 1 |" in meta["class_histogram"]
    manifest = read_manifest(paths.manifest("mnist"))
    assert {"path", "sha256", "status", "reason"} <= set(manifest.columns)
    reader = ShardReader(paths.shards("mnist"))
    assert reader.shape == (1, 32, 32) and reader.class_names == [str(i) for i in range(10)]
    x_train, y_train = reader.load_split("train")
    x_val, _ = reader.load_split("val")
    assert len(x_train) + len(x_val) == 200 and x_train.dtype == torch.uint8
    assert 0 < len(x_val) < 60  # ~10% by hash
    xf = to_float(x_train)
    assert xf.min() >= 0 and xf.max() <= 1 and xf.max() == 1.0
    shas = reader.read_column("val", "sha256")
    assert all(split_of(s, 0.1) == "val" for s in shas)
    assert y_train.tolist() == [int(lbl) for lbl in reader.read_column("train", "label")]


def test_streaming_reader_gives_the_same_tensor_as_loading_whole(mnist_slice, instance):
    assert run_ingest(instance, "mnist").success
    reader = ShardReader(mnist_slice.shards("mnist"))
    whole, labels = reader.load_split("train")
    streamed = torch.cat([b["images"] for b in reader.iter_batches("train")])
    assert torch.equal(whole, streamed)


def test_a_truncated_shard_file_is_an_error_naming_it_and_the_way_out(mnist_slice, instance):
    """Issue 14.4: a damaged shard was a bare Arrow error. It now names the file and the fix, and the fix
    (materializing image_shards again) works."""
    assert run_ingest(instance, "mnist").success
    reader = ShardReader(mnist_slice.shards("mnist"))
    rows = len(reader.load_split("train")[0])
    f = reader.files("train")[0]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CorruptShard, match=rf"shard file .*{f.name} cannot be read.*materialize image_shards"):
        reader.load_split("train")
    with pytest.raises(CorruptShard, match=f.name):
        reader.read_column("train", "sha256")
    assert run_ingest(instance, "mnist").success
    assert len(ShardReader(mnist_slice.shards("mnist")).load_split("train")[0]) == rows


def test_reingest_decodes_only_new_or_changed_files(mnist_slice, instance):
    paths = mnist_slice
    assert run_ingest(instance, "mnist").success
    write(paths.raw("mnist") / "7" / "new-one.png", noise_png(99, size=(28, 28), mode="L"))
    write(paths.raw("mnist") / "7" / "broken.png", b"\x89PNG\r\n\x1a\n garbage")
    result = run_ingest(instance, "mnist")
    assert result.success
    meta = materialization_metadata(result, "raw_images")
    assert (meta["decoded_this_run"], meta["unchanged_reused"]) == (2, 200)
    assert (meta["accepted"], meta["quarantined"]) == (201, 1)
    assert materialization_metadata(result, "image_shards")["dagster/row_count"] == 201
    # not accumulated: the described generation, plus the one before it for readers that opened it
    assert len({f.name.split("-")[1] for f in paths.shards("mnist").glob("*.parquet")}) == 2
    assert run_ingest(instance, "mnist").success
    assert len({f.name.split("-")[1] for f in paths.shards("mnist").glob("*.parquet")}) == 2


def test_parallel_workers_give_the_same_shards_as_one(mnist_slice, instance):
    paths = mnist_slice
    assert run_ingest(instance, "mnist").success
    one = ShardReader(paths.shards("mnist")).load_split("train")[0]
    assert run_ingest(instance, "mnist", {"ops": {"raw_images": {"config": {"workers": 2}},
                                                  "image_shards": {"config": {"workers": 2}}}}).success
    two = ShardReader(paths.shards("mnist")).load_split("train")[0]
    assert torch.equal(one, two)


def test_shard_config_overrides_resolution_and_channels(mnist_slice, instance):
    cfg = {"ops": {"raw_images": {"config": {"workers": 1}},
                   "image_shards": {"config": {"workers": 1, "resolution": 16, "channels": "RGB"}}}}
    assert run_ingest(instance, "mnist", cfg).success
    desc = json.loads((mnist_slice.shards("mnist") / "description.json").read_text())
    assert desc["shape"] == [3, 16, 16]


def test_checks_fail_on_a_broken_manifest_or_shards(mnist_slice, instance):
    paths = mnist_slice
    assert run_ingest(instance, "mnist").success
    manifest = read_manifest(paths.manifest("mnist"))
    passed, details = checks.manifest_covers_landing(paths.raw("mnist"), manifest.iloc[1:])
    assert not passed and details["unlisted_files"] == 1
    reader = ShardReader(paths.shards("mnist"))
    broken = manifest.copy()
    broken.loc[0, "status"] = "quarantined"
    assert not checks.shards_match_manifest(broken, reader)[0]
    reader.description["shape"] = [3, 32, 32]
    reader.shape = (3, 32, 32)
    passed, details = checks.shards_match_description(reader)
    assert not passed and "bytes per image" in details["problems"]


def test_blocking_check_fails_when_a_landing_file_is_not_in_the_manifest(mnist_slice, instance):
    """The check launched alone (as from the UI, so with no partition) catches a file that landed after ingestion."""
    import dagster as dg

    from imagegen_pipeline.defs.checks import manifest_accounts_for_every_file
    from imagegen_pipeline.defs.ingestion import raw_images
    from imagegen_pipeline.defs.resources import ImagegenStorage

    assert run_ingest(instance, "mnist").success
    write(mnist_slice.raw("mnist") / "3" / "late.png", noise_png(5, size=(28, 28), mode="L"))
    only_check = dg.define_asset_job("only_check", selection=dg.AssetSelection.checks(manifest_accounts_for_every_file))
    job = dg.Definitions(assets=[raw_images], asset_checks=[manifest_accounts_for_every_file], jobs=[only_check],
                         resources={"storage": ImagegenStorage()}).resolve_job_def("only_check")
    result = job.execute_in_process(instance=instance, raise_on_error=False)  # no partition: every dataset
    assert not result.success  # a failed blocking check fails the run
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["unlisted_files"].value == 1
    assert evaluation.metadata["examples"].value == "3/late.png"


def test_declared_test_split_becomes_val_so_the_generator_never_trains_on_it(paths, instance):
    """MNIST's official test images are what published FIDs use as reference: a source_split of test in
    labels.csv must put the row in val whatever its content hash says; undeclared datasets keep the hash split."""
    folder = paths.raw("mixed")
    rows = ["path,label,source_split"]
    for i in range(40):
        split = "test" if i % 4 == 0 else "train"
        write(folder / f"{i:02d}.png", noise_png(i, mode="L"))
        rows.append(f"{i:02d}.png,{i % 2},{split}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    assert run_ingest(instance, "mixed").success
    reader = ShardReader(paths.shards("mixed"))
    assert sorted(reader.read_column("val", "path")) == [f"{i:02d}.png" for i in range(0, 40, 4)]
    assert len(reader.read_column("train", "path")) == 30
    assert "source_split" in json.loads((paths.shards("mixed") / "description.json").read_text())["split_method"]


def test_reingesting_the_same_files_keeps_the_shards_stamp(mnist_slice, instance):
    """Issue 13.7: the stamp names training runs (resume) and the schedule's change detection. It hashed
    description.json, which holds a random file token and created_at, so every re-ingest started training from
    step 0. It must change only with the content."""
    from imagegen_pipeline.stages.common import shards_stamp

    paths = mnist_slice
    assert run_ingest(instance, "mnist").success
    first = shards_stamp(ShardReader(paths.shards("mnist")))
    assert run_ingest(instance, "mnist").success
    assert shards_stamp(ShardReader(paths.shards("mnist"))) == first
    write(paths.raw("mnist") / "7" / "extra.png", noise_png(7, mode="L"))
    assert run_ingest(instance, "mnist").success
    assert shards_stamp(ShardReader(paths.shards("mnist"))) != first


def _shard_in_a_process(landing: str, manifest: str, out_dir: str, go) -> None:
    from imagegen_pipeline.ingest.manifest import read_manifest
    from imagegen_pipeline.ingest.shards import ShardConfig, write_shards

    accepted = read_manifest(Path(manifest))
    accepted = accepted[accepted["status"] == "ok"]
    go.wait(60)
    write_shards(Path(landing), accepted, Path(out_dir), ShardConfig(resolution=32, channels="L", workers=1,
                                                                      target_shard_mb=1))


@pytest.mark.slow
def test_two_shard_writers_on_one_dataset_take_turns_and_leave_readable_shards(mnist_slice, instance):
    """Issue 13.9: each image_shards run deleted every Parquet file that was not its own, so two runs at once
    left a description.json naming deleted files. Writers now hold a cross-process lock; readers of the
    previous generation keep their files."""
    import multiprocessing as mp

    paths = mnist_slice
    assert run_ingest(instance, "mnist").success
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    args = (str(paths.raw("mnist")), str(paths.manifest("mnist")), str(paths.shards("mnist")), go)
    procs = [ctx.Process(target=_shard_in_a_process, args=args) for _ in range(3)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    reader = ShardReader(paths.shards("mnist"))
    assert sum(len(reader.load_split(s)[0]) for s in ("train", "val")) == 200  # every described file exists
    assert run_ingest(instance, "mnist").success  # a new generation while `reader` is open
    assert len(reader.read_column("train", "sha256")) == reader.num_rows("train")  # its files are still there
