"""The code location loads, with the assets, checks, job and sensor the UI shows."""

import dagster as dg

from imagegen_pipeline.definitions import defs


def test_definitions_load_with_partitioned_assets_checks_job_and_sensor():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw_images", "image_shards"} <= keys
    for key in ("raw_images", "image_shards"):
        node = graph.get(dg.AssetKey(key))
        assert isinstance(node.partitions_def, dg.DynamicPartitionsDefinition)
        assert node.partitions_def.name == "datasets" and node.group_name == "ingestion"
    checks = {c.name for c in graph.asset_check_keys}
    assert checks == {"manifest_accounts_for_every_file", "shard_rows_match_manifest", "shard_pixels_match_description"}
    assert defs.resolve_job_def("ingest_job").partitions_def.name == "datasets"
    assert defs.resolve_sensor_def("landing_sensor").default_status == dg.DefaultSensorStatus.RUNNING
