"""The nightly retrain schedule asks for runs only for datasets whose shards changed since their training."""

import json

import dagster as dg

from imagegen_pipeline.datasets import import_dataset
from imagegen_pipeline.defs.common import shards_stamp
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.defs.schedules import retrain_changed_datasets
from imagegen_pipeline.ml.shard_reader import ShardReader
from imagegen_pipeline_tests.conftest import noise_png, run_ingest, write


def evaluate(instance, paths):
    ctx = dg.build_schedule_context(instance=instance, resources={"storage": ImagegenStorage(home=str(paths.home))})
    return retrain_changed_datasets(ctx)


def test_schedule_retrains_only_changed_datasets(paths, instance):
    import_dataset("mnist", paths, limit=60)
    assert run_ingest(instance, "mnist").success
    [req] = evaluate(instance, paths)  # never trained
    assert req.partition_key == "mnist" and req.tags["imagegen/trigger"] == "schedule"
    stamp = shards_stamp(ShardReader(paths.shards("mnist")))
    paths.models("mnist").mkdir(parents=True)
    (paths.models("mnist") / "generator_summary.json").write_text(json.dumps({"shards": stamp}))
    assert isinstance(evaluate(instance, paths), dg.SkipReason)  # trained on these very shards
    write(paths.raw("mnist") / "3" / "new.png", noise_png(5, size=(28, 28), mode="L"))
    assert run_ingest(instance, "mnist").success
    [req] = evaluate(instance, paths)  # new data since training
    assert req.run_key == f"mnist:{shards_stamp(ShardReader(paths.shards('mnist')))}" and req.run_key != f"mnist:{stamp}"
