"""evaluation_report + the generator_champion promotion asset, through real Dagster runs, real Inception and real MLflow."""

from __future__ import annotations

import json
from pathlib import Path
import re

import dagster as dg
import mlflow
import pytest

from imagegen_pipeline.datasets import import_dataset
from imagegen_pipeline.defs.dcgan import dcgan_checkpoint
from imagegen_pipeline.defs.evaluation import evaluation_report, generator_champion
from imagegen_pipeline.defs.extractor import feature_extractor, image_embeddings
from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker, TrainingLauncher
from imagegen_pipeline.ml.metrics.inception import DETECTOR_ID
from imagegen_pipeline.tracking.registry import METRIC_TAG, PROTOCOL_TAG
from imagegen_pipeline.tracking.tracker import logged_model_id
from imagegen_pipeline_tests.conftest import run_ingest
from imagegen_pipeline_tests.test_dcgan_asset import TINY_GAN
from imagegen_pipeline_tests.test_features_assets import TINY_EXTRACTOR

# The from-scratch baseline is test_features_assets' subject; here it would only double the extractor's time.
EXTRACTOR = {**TINY_EXTRACTOR, "train_baseline": False}
TINY_EVAL = {"device": "cpu", "num_samples": 20, "num_real": 20, "per_class_min": 2, "detector_batch_size": 20}
# A 6-step GAN cannot pass the real quality gate; the promotion-mechanics tests open it wide on purpose.
OPEN_GATE = {"gate_min_diversity_ratio": 0.0, "gate_min_recall": 0.0, "gate_max_fid_over_floor": 1e9,
             "gate_max_ms_ssim_ratio": 1e9}
GENERATOR = "imagegen-generator-mnist"
pytestmark = pytest.mark.slow  # every test trains, registers and evaluates through Dagster (10-25 s each)


@pytest.fixture
def trained(paths, instance, mlflow_uri):
    import_dataset("mnist", paths, limit=200)
    assert run_ingest(instance, "mnist").success
    return paths


def run(paths, instance, assets, **ops) -> dg.ExecuteInProcessResult:
    config = {"feature_extractor": EXTRACTOR, "image_embeddings": {"device": "cpu"},
              "dcgan_checkpoint": TINY_GAN, "evaluation_report": {**TINY_EVAL, **OPEN_GATE}}
    config.update(ops)
    result = dg.materialize(assets, partition_key="mnist", instance=instance, raise_on_error=False,
                            resources={"storage": ImagegenStorage(home=str(paths.home)),
                                       "mlflow_tracker": MlflowTracker(), "training": TrainingLauncher()},
                            run_config={"ops": {k: {"config": v} for k, v in config.items()
                                                if k in {key.to_user_string() for a in assets for key in a.keys}}})
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def promotion(result) -> tuple[bool, str]:
    """What the run's generator_champion materialization decided, and why."""
    [mat] = result.asset_materializations_for_node("generator_champion")
    return mat.metadata["promoted"].value, mat.metadata["reason"].value


def test_report_is_written_logged_and_the_first_model_becomes_champion(trained, instance, mlflow_uri):
    """All metrics land in JSON/HTML/metadata and the generator's MLflow run; v1 takes `champion`."""
    paths = trained
    result = run(paths, instance, [feature_extractor, image_embeddings, dcgan_checkpoint, evaluation_report,
                                   generator_champion])
    [mat] = result.asset_materializations_for_node("evaluation_report")
    meta = {k: v.value for k, v in mat.metadata.items()}
    for key in ("fid", "kid", "precision", "recall", "conditional_accuracy", "is_domain", "real_floor_fid"):
        assert isinstance(meta[key], float), key
    assert meta["fid"] > 0 and 0 <= meta["conditional_accuracy"] <= 1
    assert "| fid |" in meta["summary"] and "data:image/png;base64," in meta["samples"]
    report = json.loads((paths.reports("mnist") / "eval-v1" / "report.json").read_text())
    assert report["headline"]["fid"] == pytest.approx(meta["fid"], rel=1e-4)
    assert "memorization_nn_distance_mean" in report["results"]
    for name in ("cas", "lpips_diversity", "lpips_memorization"):  # issue 35.1: the quick protocol names what it left
        assert "quick protocol" in report["skipped"][name] and name not in report["seconds"], name
    assert (paths.reports("mnist") / "eval-v1" / "report.html").read_text().count("<tr>") > 5
    assert promotion(result) == (True, "first model: version 1 passed the quality gate and becomes champion")
    assert meta["quality_gate"] == "passed" and report["quality_gate"]["passed"]
    # what `imagegen pipeline` (so `make demo`) ends with (issue 29.2): time per stage, FID against its floor, links
    from imagegen_pipeline.cli import pipeline_summary

    summary = pipeline_summary(result, instance, "mnist")
    assert summary[0].startswith("summary of mnist (dagster run ") and summary[0].endswith("succeeded)")
    assert summary[1].startswith("  time per stage (") and all(
        f"{step} " in summary[1] for step in ("feature_extractor", "dcgan_checkpoint", "evaluation_report")), summary
    assert "extractor_accuracy_above_floor" not in summary[1]  # checks count in the total, not as stages
    assert summary[2] == (f"  FID {meta['fid']:.1f} against its real floor {meta['real_floor_fid']:.1f} "
                          f"({meta['fid'] / meta['real_floor_fid']:.1f}x the floor); quality gate: passed")
    assert f"  report: {meta['report_html']}" in summary and "http://127.0.0.1:3000" in summary[-1]
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(GENERATOR, "champion")
    assert str(champion.version) == "1" and float(champion.tags[METRIC_TAG + "fid"]) == pytest.approx(meta["fid"])
    evaluation_run = champion.tags["imagegen.evaluation_run"]  # its own run, linked to the version (issue 28.11)
    run_data = client.get_run(evaluation_run).data
    assert run_data.metrics["eval_fid"] == pytest.approx(meta["fid"])
    scored = {m.key: m.value for m in client.get_logged_model(logged_model_id(champion)).metrics}  # LoggedModel
    assert scored["eval_fid"] == pytest.approx(meta["fid"]) and "eval_conditional_accuracy" in scored
    assert "evaluation" in {a.path for a in client.list_artifacts(evaluation_run)}
    # the protocol travels with every figure: report, Markdown, MLflow run tags and the registered version
    protocol = report["protocol"]
    assert (protocol["name"], protocol["num_samples"], protocol["detector"]) == ("custom", 20, DETECTOR_ID)
    assert re.fullmatch(r"val split, \d+ images \(1x32x32\)", protocol["reference"])
    assert protocol["precision_recall_k"] == 3
    assert "Protocol **custom**: 20 samples against the val split" in meta["summary"]
    assert run_data.tags["eval.protocol.num_samples"] == "20" and run_data.tags["eval.protocol.detector"] == DETECTOR_ID
    assert champion.tags[PROTOCOL_TAG] == protocol["key"] == meta["protocol"]


def test_champion_moves_only_to_a_measurably_better_evaluated_generator(trained, instance, mlflow_uri):
    """Every version is trained and scored for real: 6 steps, then 300 (clearly better: takes the alias), then
    6 steps with another seed (worse: v2 stays champion, and the reason names the FIDs and the margin)."""
    paths = trained
    chain = [dcgan_checkpoint, evaluation_report, generator_champion]
    run(paths, instance, [feature_extractor, image_embeddings, *chain])
    better = run(paths, instance, chain, dcgan_checkpoint={**TINY_GAN, "steps": 300, "checkpoint_every": 100,
                                                            "sample_every": 100, "log_every": 50})
    passed, reason = promotion(better)
    assert passed and reason.startswith("better than v1: fid") and "(margin " in reason
    worse = run(paths, instance, chain, dcgan_checkpoint={**TINY_GAN, "seed": 1})
    passed, reason = promotion(worse)
    assert not passed and reason.startswith("kept v2 as champion: fid")
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(GENERATOR, "champion").version) == "2"
    tags = {v: client.get_model_version(GENERATOR, v).tags for v in ("1", "2", "3")}
    fid = {v: float(t[METRIC_TAG + "fid"]) for v, t in tags.items()}
    assert fid["2"] < fid["1"] and fid["2"] < fid["3"] and float(tags["2"][METRIC_TAG + "fid_std"]) > 0
    assert "kept v2" in tags["3"]["imagegen.promotion"]


def test_champion_scored_under_another_protocol_is_rescored_before_the_comparison(trained, instance, mlflow_uri):
    """Issue 13.2: FID at 20 samples and at 30 do not compare. Evaluating v2 at 30 re-scores champion v1's
    registered weights at 30 first; its tags then carry the new protocol, and the decision compares like with like."""
    paths = trained
    chain = [dcgan_checkpoint, evaluation_report, generator_champion]
    run(paths, instance, [feature_extractor, image_embeddings, *chain])
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    before = client.get_model_version(GENERATOR, "1").tags
    second = run(paths, instance, chain, evaluation_report={**TINY_EVAL, **OPEN_GATE, "num_samples": 30})
    report = json.loads((paths.reports("mnist") / "eval-v2" / "report.json").read_text())
    assert report["protocol"]["num_samples"] == 30 and report["champion_rescored"]["version"] == "1"
    after = client.get_model_version(GENERATOR, "1").tags
    assert after[PROTOCOL_TAG] == report["protocol"]["key"] != before[PROTOCOL_TAG]
    assert float(after[METRIC_TAG + "fid"]) == pytest.approx(report["champion_rescored"]["headline"]["fid"])
    assert "another protocol" not in promotion(second)[1]


def test_a_champion_whose_weights_are_gone_is_kept_not_a_crash_of_the_evaluation(trained, instance, mlflow_uri):
    """When the champion cannot be re-scored (its registered weights left the artifact store), the candidate is
    still judged, the report says why, and the champion stays: scores of two protocols are never compared."""
    paths = trained
    chain = [dcgan_checkpoint, evaluation_report, generator_champion]
    run(paths, instance, [feature_extractor, image_embeddings, *chain])
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    stored = Path(client.get_model_version_download_uri(GENERATOR, "1").removeprefix("file://"))
    [weights] = list(stored.rglob("generator.safetensors"))
    weights.unlink()
    second = run(paths, instance, chain, evaluation_report={**TINY_EVAL, **OPEN_GATE, "num_samples": 30})
    report = json.loads((paths.reports("mnist") / "eval-v2" / "report.json").read_text())
    assert report["champion_rescored"]["version"] == "1"
    assert "models:/imagegen-generator-mnist/1: its artifact 'generator' cannot be read" in \
        report["champion_rescored"]["error"]
    assert str(client.get_model_version_by_alias(GENERATOR, "champion").version) == "1"
    assert "another protocol" in promotion(second)[1]


def test_quality_gate_rejects_a_rigged_short_run_even_as_the_first_model(trained, instance, mlflow_uri):
    """A generator trained for 6 steps is scored for real (FID, recall, within-label diversity) and fails the
    default gate: it is registered with the tag `rejected` and the reason, and no `champion` alias appears."""
    paths = trained
    result = run(paths, instance, [feature_extractor, image_embeddings, dcgan_checkpoint, evaluation_report,
                                   generator_champion], evaluation_report=TINY_EVAL)
    passed, reason = promotion(result)
    assert not passed and reason.startswith("version 1 failed the quality gate:") and "no champion yet" in reason
    [mat] = result.asset_materializations_for_node("evaluation_report")
    assert mat.metadata["quality_gate"].value.startswith("rejected: ")
    report = json.loads((paths.reports("mnist") / "eval-v1" / "report.json").read_text())
    assert not report["quality_gate"]["passed"] and report["quality_gate"]["failures"]
    assert any("FID" in f or "recall" in f or "diversity" in f for f in report["quality_gate"]["failures"])
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    tags = client.get_model_version(GENERATOR, "1").tags
    assert tags["rejected"] and tags["imagegen.gate"].startswith("rejected: ")
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(GENERATOR, "champion")


def test_evaluation_scores_the_registered_version_with_the_judge_it_was_trained_with(trained, instance, mlflow_uri):
    """Issues 13.3 and 13.4: evaluation read data/models/<ds>/generator.safetensors (replaced by any later
    training) and judged with whichever extractor was newest locally. With the local generator file spoiled and a
    newer extractor trained, re-evaluating v1 gives the same scores, under the same judge, extractor v1."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    paths = trained
    run(paths, instance, [feature_extractor, image_embeddings, dcgan_checkpoint, evaluation_report])
    first = json.loads((paths.reports("mnist") / "eval-v1" / "report.json").read_text())
    local = paths.models("mnist") / "generator.safetensors"
    with safe_open(str(local), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: (v + 0.5 if v.is_floating_point() else v) for k, v in tensors.items()}, str(local), metadata=meta)
    run(paths, instance, [feature_extractor], feature_extractor={**EXTRACTOR, "seed": 1})  # extractor v2
    again = run(paths, instance, [evaluation_report])
    [mat] = again.asset_materializations_for_node("evaluation_report")
    second = json.loads((paths.reports("mnist") / "eval-v1" / "report.json").read_text())
    assert second["protocol"]["judge"] == first["protocol"]["judge"] == "imagegen-extractor-mnist v1"
    assert second["headline"]["fid"] == pytest.approx(first["headline"]["fid"], rel=1e-6)
    assert second["headline"]["conditional_accuracy"] == pytest.approx(first["headline"]["conditional_accuracy"])
    assert mat.metadata["protocol"].value == first["protocol"]["key"]


def test_the_champion_asset_materialized_on_its_own_decides_on_the_last_evaluation(trained, instance, mlflow_uri):
    """Promotion is an asset (issue 15.6): evaluated in one run, promoted in a later one from the UI, it judges the
    version the last evaluation scored and records which evaluation that was; with nothing evaluated it fails."""
    paths = trained
    alone = dg.materialize([generator_champion], partition_key="mnist", instance=instance, raise_on_error=False,
                           resources={"storage": ImagegenStorage(home=str(paths.home)),
                                      "mlflow_tracker": MlflowTracker(), "training": TrainingLauncher()})
    assert not alone.success
    assert any("no evaluation to promote from" in str(e.event_specific_data.error) for e in alone.all_events
               if e.is_step_failure)
    run(paths, instance, [feature_extractor, image_embeddings, dcgan_checkpoint, evaluation_report])
    later = run(paths, instance, [generator_champion])
    [mat] = later.asset_materializations_for_node("generator_champion")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["promoted"] and meta["judged"] == f"{GENERATOR} v1" and meta["champion_now"] == "1"
    assert meta["judged_in"] == "the last evaluation (an earlier run)"
    assert "/#/models/imagegen-generator-mnist/versions/1" in meta["mlflow_model"]


def test_a_vae_is_registered_beside_the_dcgan_and_competes_under_the_same_gate(trained, instance, mlflow_uri):
    """Issue 16.3: the second family trains in the same asset (family: vae), is registered under the same name with
    its family tag, is scored by the same protocol, and the champion decision compares it like any version; the
    report's family table has one row per family."""
    paths = trained
    chain = [dcgan_checkpoint, evaluation_report, generator_champion]
    run(paths, instance, [feature_extractor, image_embeddings, *chain])
    # what bench/ablations.py leaves beside the reports (and a half-written file, which must not break them)
    rows = [{"variant": "feature_head on", "version": "7", "fid": 273.6, "recall": 0.0, "train_seconds": 389.0},
            {"variant": "feature_head off", "version": "8", "fid": 109.5, "recall": 0.109, "train_seconds": 45.0}]
    (paths.reports("mnist") / "ablation-feature-head.json").write_text(json.dumps({"rows": rows}))
    (paths.reports("mnist") / "ablation-broken.json").write_text('{"rows": [')
    second = run(paths, instance, chain, dcgan_checkpoint={**TINY_GAN, "family": "vae", "steps": 40})
    [mat] = second.asset_materializations_for_node("dcgan_checkpoint")
    assert mat.metadata["family"].value == "vae"
    report = json.loads((paths.reports("mnist") / "eval-v2" / "report.json").read_text())
    assert {r["family"]: r["version"] for r in report["families"]} == {"dcgan": "1", "vae": "2"}
    assert all(r["fid"] > 0 and r["train_seconds"] > 0 for r in report["families"])
    [eval_mat] = second.asset_materializations_for_node("evaluation_report")
    assert "| vae | 2 |" in eval_mat.metadata["families"].value and "| dcgan | 1 |" in eval_mat.metadata["summary"].value
    # issue 16.5: the ablation tables measured on this dataset are part of the report, in every form
    [ablation] = report["ablations"]
    assert ablation["experiment"] == "feature-head" and ablation["rows"] == rows
    assert ablation["columns"] == ["variant", "version", "fid", "recall", "train_seconds"]
    assert "| feature_head on | 7 | 273.6 | 0 | 389 |" in eval_mat.metadata["ablations"].value
    assert "| feature_head off | 8 | 109.5 | 0.109 | 45 |" in eval_mat.metadata["summary"].value
    page = (paths.reports("mnist") / "eval-v2" / "report.html").read_text()
    assert "<h2>Ablation: feature-head (bench/ablations.py)</h2>" in page and "<td>feature_head off</td>" in page
    assert "<h2>Model families" in page and "<td>vae</td><td>2</td>" in page
    mlflow.set_tracking_uri(mlflow_uri)
    tags = mlflow.MlflowClient().get_model_version(GENERATOR, "2").tags
    assert tags["imagegen.family"] == "vae" and tags[PROTOCOL_TAG] == report["protocol"]["key"]
    # the outcome is known by construction: 40 VAE steps already draw blurred digits, 6 DCGAN steps draw noise
    # (FID 358 vs 445 when measured), so the VAE wins on FID by more than the noise margin, and the reason says so
    fids = {r["family"]: r["fid"] for r in report["families"]}
    assert fids["vae"] < fids["dcgan"] - 50, fids
    promoted, reason = promotion(second)
    assert promoted and reason.startswith(f"better than v1: fid {fids['vae']:.4g} vs {fids['dcgan']:.4g}"), reason
    assert str(mlflow.MlflowClient().get_registered_model(GENERATOR).aliases["champion"]) == "2"


def test_a_failed_evaluation_leaves_the_training_run_finished(trained, instance, mlflow_uri):
    """Issue 28.11: evaluation reopened the generator's training run, and MLflow marks the run it leaves on an
    exception FAILED, so an upload error in the evaluation turned a good training run red. Evaluation now logs
    into a run of its own, tagged with the training run and the model version (and the version names it)."""
    paths = trained
    resources = {"storage": ImagegenStorage(home=str(paths.home)), "mlflow_tracker": MlflowTracker(),
                 "training": TrainingLauncher()}
    run(paths, instance, [dcgan_checkpoint])
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    training_run = client.get_model_version(GENERATOR, "1").run_id
    stray = paths.reports("mnist") / "eval-v1" / "big-samples.npz"  # a link to a file someone deleted
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.symlink_to(paths.home / "gone.npz")
    failed = dg.materialize([evaluation_report], partition_key="mnist", instance=instance, raise_on_error=False,
                            resources=resources,
                            run_config={"ops": {"evaluation_report": {"config": {**TINY_EVAL, **OPEN_GATE}}}})
    assert not failed.success
    assert "big-samples.npz" in str(failed.failure_data_for_node("evaluation_report").error)  # the upload failed
    assert client.get_run(training_run).info.status == "FINISHED"
    [eval_run] = client.search_runs([client.get_run(training_run).info.experiment_id],
                                    f"tags.`imagegen.training_run` = '{training_run}'")
    assert eval_run.info.status == "FAILED" and eval_run.data.tags["imagegen.model_version"] == "1"

    stray.unlink()
    run(paths, instance, [evaluation_report])
    mv = client.get_model_version(GENERATOR, "1")
    evaluation = client.get_run(mv.tags["imagegen.evaluation_run"])
    assert evaluation.info.run_id != training_run and evaluation.info.status == "FINISHED"
    assert evaluation.data.tags["imagegen.training_run"] == training_run
    assert evaluation.data.tags["imagegen.registered_model"] == GENERATOR
    assert evaluation.data.metrics["eval_fid"] == pytest.approx(float(mv.tags[METRIC_TAG + "fid"]))
    assert "evaluation" in {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert client.get_run(training_run).info.status == "FINISHED"


TINY_DIFFUSION = {**TINY_GAN, "family": "diffusion", "steps": 6,
                  "diffusion": {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [],
                                "sample_steps": 2, "lr_warmup": 1}}


def test_a_diffusion_model_competes_under_the_same_gate_and_serves_with_its_guidance(trained, instance, mlflow_uri):
    """Issue 26: the third family trains in the same asset (family: diffusion), is registered with its family tag
    and scored by the same protocol, gate and family table; its pyfunc takes `guidance` per request and records
    it beside each picture."""
    import pandas as pd

    paths = trained
    result = run(paths, instance, [feature_extractor, image_embeddings, dcgan_checkpoint, evaluation_report,
                                   generator_champion], dcgan_checkpoint=TINY_DIFFUSION)
    [mat] = result.asset_materializations_for_node("dcgan_checkpoint")
    assert mat.metadata["family"].value == "diffusion" and mat.metadata["steps"].value == 6
    report = json.loads((paths.reports("mnist") / "eval-v1" / "report.json").read_text())
    assert [r["family"] for r in report["families"]] == ["diffusion"] and report["headline"]["fid"] > 0
    mlflow.set_tracking_uri(mlflow_uri)
    assert mlflow.MlflowClient().get_model_version(GENERATOR, "1").tags["imagegen.family"] == "diffusion"
    model = mlflow.pyfunc.load_model(f"models:/{GENERATOR}/1")
    ask = pd.DataFrame({"label": ["7"], "seed": [3], "count": [2]})
    plain = model.predict(ask, params={"format": "array", "guidance": 1.0})
    guided = model.predict(ask, params={"format": "array", "guidance": 4.0})
    assert plain.shape == (2, 32, 32, 1) and (plain != guided).any()
    assert (model.predict(ask, params={"format": "array", "guidance": 4.0}) == guided).all()
    assert model.predict(ask, params={"guidance": 4.0})["guidance"].tolist() == [4.0, 4.0]
