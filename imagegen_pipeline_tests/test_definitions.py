"""The code location loads, with the assets, checks, jobs and sensors the UI shows."""

import dagster as dg

from imagegen_pipeline.definitions import defs

STAGES = {"raw_images": "ingestion", "image_shards": "ingestion", "feature_extractor": "features",
          "image_embeddings": "features", "dcgan_checkpoint": "generation", "evaluation_report": "evaluation",
          "sample_gallery": "evaluation", "caption_embeddings": "features", "prompt_gallery": "evaluation",
          "generator_champion": "evaluation", "extractor_champion": "features"}


def test_definitions_load_with_partitioned_assets_checks_jobs_and_sensors():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(STAGES) <= keys
    for key, group in STAGES.items():
        node = graph.get(dg.AssetKey(key))
        assert isinstance(node.partitions_def, dg.DynamicPartitionsDefinition)
        assert node.partitions_def.name == "datasets" and node.group_name == group
    checks = {c.name for c in graph.asset_check_keys}
    assert {"manifest_accounts_for_every_file", "shard_rows_match_manifest", "shard_pixels_match_description",
            "extractor_accuracy_above_floor", "one_embedding_per_image", "embeddings_are_finite"} <= checks
    for job in ("ingest_job", "features_job", "captions_job", "train_job", "evaluate_job", "retrain_job",
                "pipeline_job", "text_job"):
        assert defs.resolve_job_def(job).partitions_def.name == "datasets"
    sensor = defs.resolve_sensor_def("landing_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING and sensor.job_name == "pipeline_job"


def test_training_assets_share_one_gpu_pool_and_backfill_one_dataset_per_run():
    """Two trainings never share a GPU (pool 'gpu', limit 1 in dagster.yaml); backfills go dataset by dataset."""
    graph = defs.resolve_asset_graph()
    for key in ("feature_extractor", "dcgan_checkpoint"):
        assets_def = graph.get(dg.AssetKey(key)).assets_def
        assert assets_def.op.pool == "gpu"
        assert assets_def.backfill_policy == dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
