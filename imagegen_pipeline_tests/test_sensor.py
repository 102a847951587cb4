"""The landing sensor: new folders add a partition and one run; bursts settle into one run; bad names are ignored."""

from __future__ import annotations

import dagster as dg

from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.defs.sensors import landing_sensor
from imagegen_pipeline_tests.conftest import noise_png, run_ingest, write


def tick(instance, paths, cursor):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"storage": ImagegenStorage(home=str(paths.home))})
    result = landing_sensor(ctx)
    for req in result.dynamic_partitions_requests or []:  # what the daemon does with the requests
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def test_new_dataset_folder_adds_partition_and_requests_one_run(paths, instance):
    for i in range(3):
        write(paths.raw("birds") / "owl" / f"{i}.png", noise_png(i))
    first = tick(instance, paths, None)
    assert first.run_requests == []  # seen once: wait a tick in case files are still arriving
    second = tick(instance, paths, first.cursor)
    [req] = second.run_requests
    assert req.partition_key == "birds" and req.run_key.startswith("birds:")
    assert [r.partition_keys for r in second.dynamic_partitions_requests] == [["birds"]]
    assert instance.get_dynamic_partitions("datasets") == ["birds"]
    third = tick(instance, paths, second.cursor)
    assert third.run_requests == [] and not third.dynamic_partitions_requests


def test_a_burst_of_new_files_gives_one_run_not_one_per_file(paths, instance):
    write(paths.raw("birds") / "owl" / "0.png", noise_png(0))
    cursor = tick(instance, paths, tick(instance, paths, None).cursor).cursor  # initial ingestion requested
    requests = []
    for i in range(1, 6):  # files keep landing across ticks
        write(paths.raw("birds") / "owl" / f"{i}.png", noise_png(i))
        result = tick(instance, paths, cursor)
        requests += result.run_requests
        cursor = result.cursor
    assert requests == []
    settled = tick(instance, paths, cursor)
    assert [r.partition_key for r in settled.run_requests] == ["birds"]
    assert tick(instance, paths, settled.cursor).run_requests == []


def test_invalid_names_hidden_and_empty_folders_are_ignored(paths, instance):
    write(paths.raw_root / "Bad Name" / "x.png", noise_png(0))
    write(paths.raw_root / ".mnist.importing-123" / "x.png", noise_png(1))
    (paths.raw_root / "empty").mkdir(parents=True)
    result = tick(instance, paths, tick(instance, paths, None).cursor)
    assert result.run_requests == [] and instance.get_dynamic_partitions("datasets") == []


def test_already_ingested_dataset_is_not_requested_again_when_the_sensor_starts(paths, instance):
    write(paths.raw("birds") / "owl" / "0.png", noise_png(0))
    assert run_ingest(instance, "birds").success
    first = tick(instance, paths, None)
    assert first.run_requests == [] and tick(instance, paths, first.cursor).run_requests == []


def test_no_landing_folder_at_all_is_fine(paths, instance):
    result = tick(instance, paths, None)
    assert result.run_requests == [] and result.cursor
