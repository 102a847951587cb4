"""Declarative Automation (issue 15.6): the automation sensor asks for the whole chain downstream of the shards when
their content changed, once, and not when the same files are ingested again (image_shards' data version is its
content key). Evaluated by Dagster's own evaluator against a real instance and real ingest runs."""

import dagster as dg

from imagegen_pipeline.datasets import import_dataset
from imagegen_pipeline.definitions import defs
from imagegen_pipeline_tests.conftest import noise_png, run_ingest, write

DOWNSTREAM = {"feature_extractor", "extractor_champion", "image_embeddings", "dcgan_checkpoint", "evaluation_report", "generator_champion",
              "sample_gallery"}


def tick(instance, cursor=None) -> tuple[object, dict[str, list[str]]]:
    """One evaluation of every automation condition: (cursor, asset -> requested partitions)."""
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    requested = {k.to_user_string(): sorted(result.get_requested_partitions(k))
                 for k in defs.resolve_asset_graph().get_all_asset_keys() if result.get_num_requested(k)}
    return result.cursor, requested


def test_changed_shards_retrain_everything_downstream_once_and_the_same_files_nothing(paths, instance):
    import_dataset("mnist", paths, limit=60)
    assert run_ingest(instance, "mnist").success
    for key in DOWNSTREAM:  # trained and evaluated once (the pipeline job's materializations, reported)
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition="mnist"))
    cursor, requested = tick(instance)
    assert requested == {}
    assert run_ingest(instance, "mnist").success  # the same files again: same content key, same data version
    cursor, requested = tick(instance, cursor)
    assert requested == {}
    write(paths.raw("mnist") / "3" / "new.png", noise_png(5, size=(28, 28), mode="L"))
    assert run_ingest(instance, "mnist").success
    cursor, requested = tick(instance, cursor)
    assert requested == {key: ["mnist"] for key in DOWNSTREAM}  # captions and prompts are text-only: not asked
    cursor, requested = tick(instance, cursor)
    assert requested == {}  # handled: asked once


def test_the_automation_sensor_is_defined_and_off_until_turned_on():
    sensor = defs.resolve_sensor_def("retrain_when_data_changes")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
