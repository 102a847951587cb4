"""Asset `evaluation_report` and the `champion` promotion check: judge the latest trained generator by FID, KID,
precision/recall and the extractor's scores, log it to the generator's MLflow run, and move the registry alias
`champion` only when the new model is better."""

import json
import tempfile
import time
from pathlib import Path

import dagster as dg
import mlflow
from pydantic import Field

from imagegen_pipeline.atomic import write_bytes_atomic, write_json_atomic
from imagegen_pipeline.defs.artifacts import (DCGAN_CHECKPOINT, EXTRACTOR_VERSION_TAG, IMAGE_EMBEDDINGS,
                                              fine_tuned_extractor, generator_summary)
from imagegen_pipeline.defs.common import curves_png, dataset_of, open_shards
from imagegen_pipeline.defs.metadata import png_markdown
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker
from imagegen_pipeline.ml import evaluation as core
from imagegen_pipeline.ml.dcgan import load_generator
from imagegen_pipeline.ml.embeddings_store import EMBEDDINGS_FILE, embedding_matrix, read_embeddings
from imagegen_pipeline.ml.extractor import load_extractor
from imagegen_pipeline.ml.grids import image_grid, png_bytes
from imagegen_pipeline.ml.metrics import append_jsonl, read_jsonl
from imagegen_pipeline.ml.metrics.feature_cache import FeatureCache
from imagegen_pipeline.ml.metrics.inception import InceptionFeatures, MissingDetectorError
from imagegen_pipeline.ml.quality_gate import QualityGate, gate_failures
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.review import review_summary, reviews_db
from imagegen_pipeline.tracking.registry import (GATE_TAG, METRIC_TAG, PROTOCOL_TAG, REJECTED_TAG, Guard,
                                                 MissingArtifact, current_alias_holder, download_model_artifact,
                                                 promote_if_better, registered_name)
from imagegen_pipeline.tracking.store import use_store

GROUP = "evaluation"
LATEST_FILE = "latest_evaluation.json"  # in reports/<dataset>/: which version the last report judged
HISTORY_FILE = "history.jsonl"


class EvaluationConfig(dg.Config):
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'.")
    protocol: str = Field(default="quick", description="'quick' (1,000 samples vs 1,000 val images) or 'paper' "
                                                       "(10,000 vs 10,000: MNIST's official test images). Recorded "
                                                       "with every figure; FID falls as N grows.")
    num_samples: int | None = Field(default=None, description="Generated images to judge; unset = the protocol's.")
    num_real: int | None = Field(default=None, description="Cap on real images per split (val = reference, train = "
                                                           "floor); unset = the protocol's.")
    per_class_min: int = Field(default=50, description="Per-class FID only for classes with this many images.")
    detector_batch_size: int = Field(default=64, description="Images per Inception forward pass.")
    seed: int = Field(default=0, description="Noise seeds and real subsets.")
    gate_min_diversity_ratio: float = Field(default=QualityGate.min_diversity_ratio,
                                            description="Quality gate: within-label diversity vs real, at least.")
    gate_min_recall: float = Field(default=QualityGate.min_recall, description="Quality gate: recall, at least.")
    gate_max_fid_over_floor: float = Field(default=QualityGate.max_fid_over_floor,
                                           description="Quality gate: FID at most this multiple of the real floor.")
    gate_max_ms_ssim_ratio: float = Field(default=QualityGate.max_ms_ssim_ratio,
                                          description="Quality gate: same-class MS-SSIM of samples vs real pairs, at "
                                                      "most (above 1: samples more alike than the data).")

    def to_core(self) -> core.EvalConfig:
        if self.protocol not in core.PROTOCOLS:
            raise dg.Failure(f"unknown evaluation protocol {self.protocol!r}; choose from {sorted(core.PROTOCOLS)}")
        named = core.PROTOCOLS[self.protocol]
        n = self.num_samples or named["num_samples"]
        return core.EvalConfig(num_samples=n, num_real=self.num_real or named["num_real"], protocol=self.protocol,
                               per_class_min=self.per_class_min, kid_subset_size=min(1000, n), seed=self.seed)

    def gate(self) -> QualityGate:
        return QualityGate(self.gate_min_diversity_ratio, self.gate_min_recall, self.gate_max_fid_over_floor,
                           self.gate_max_ms_ssim_ratio)


def _held_out_captions(paths, dataset: str, with_bank: bool) -> dict:
    """A text model is judged on the val split's captions; the train split's captions + image embeddings are
    the caption bank that R-precision describes generated images with."""
    from imagegen_pipeline.ml.prompt_score import CAPTIONS_FILE, CaptionBank, read_captions

    if not (paths.embeddings(dataset) / CAPTIONS_FILE).is_file():
        raise dg.Failure(f"{dataset}: the generator is text-conditioned and is evaluated on held-out captions; "
                         f"no {paths.embeddings(dataset) / CAPTIONS_FILE}: materialize caption_embeddings")
    val = read_captions(paths.embeddings(dataset), split="val")
    train = read_captions(paths.embeddings(dataset), split="train")
    seen = float(val["caption"].isin(set(train["caption"])).mean()) if len(val) else 0.0
    if len(val) < 2:
        raise dg.Failure(f"{dataset}: {len(val)} val captions; a text model needs held-out captions to be judged on")
    bank = None
    if with_bank:
        try:
            bank = CaptionBank.from_frames(read_embeddings(paths.embeddings(dataset), split="train"), train)
        except ValueError:  # embeddings and captions from different shards: r_precision is skipped, says why
            bank = None
    return {"text_conds": embedding_matrix(val), "caption_ids": val["sha256"].tolist(), "caption_bank": bank,
            "val_captions_seen_in_train": seen}


@dg.asset(partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN,
          group_name=GROUP, kinds={"pytorch", "mlflow", "html"},
          deps=[DCGAN_CHECKPOINT, IMAGE_EMBEDDINGS],
          description="FID/KID (standard InceptionV3) against the val split, the train-vs-val floor, precision/"
                      "recall, is_domain, asked-for-class accuracy, diversity and memorisation of the latest "
                      "EMA generator, as JSON, HTML and Markdown; logged to the generator's MLflow run.")
def evaluation_report(context: dg.AssetExecutionContext, config: EvaluationConfig, storage: ImagegenStorage,
                      mlflow_tracker: MlflowTracker) -> dg.MaterializeResult:
    dataset = dataset_of(context)
    paths = storage.paths
    runtime = resolve_runtime(config.device)
    use_store(mlflow_tracker.uri(paths))
    client = mlflow.MlflowClient()
    summary = generator_summary(paths, dataset)
    name, version = summary["registered_model"], str(summary["version"])
    reader = open_shards(paths, dataset)
    splits = {}
    for split in ("train", "val"):
        images, labels = reader.load_split(split)
        splits[split] = core.RealSplit(images, labels, reader.read_column(split, "sha256"))
    try:
        detector = InceptionFeatures(runtime=runtime, batch_size=config.detector_batch_size)
    except MissingDetectorError as exc:
        raise dg.Failure(str(exc)) from exc
    train_emb = None
    if (paths.embeddings(dataset) / EMBEDDINGS_FILE).is_file():
        train_emb = embedding_matrix(read_embeddings(paths.embeddings(dataset), split="train"))
    eval_cfg = config.to_core()
    with tempfile.TemporaryDirectory(prefix="imagegen-eval-") as tmp:
        # the registered artifacts, by version: the generator users are served, judged by the extractor version
        # it was trained with (tag), so a candidate and the champion it is compared with share one judge
        generator, gcfg = load_generator(download_model_artifact(name, version, "generator", Path(tmp) / "g"),
                                         device=runtime.device)
        judge_version = client.get_model_version(name, version).tags.get(EXTRACTOR_VERSION_TAG)
        extractor, judge = _registered_judge(paths, dataset, judge_version, Path(tmp) / "x", runtime.device)
        text = _held_out_captions(paths, dataset, train_emb is not None) if gcfg.conditioning == "text" else {}
        seen = text.pop("val_captions_seen_in_train", None)  # must be 0: held-out captions are never trained on

        def judge_generator(g, cfg, log) -> core.EvalResult:
            return core.evaluate_generator(
                g, cfg, train=splits["train"], val=splits["val"], detector=detector,
                cache=FeatureCache(paths.reports(dataset) / "detector_cache"), extractor=extractor,
                train_embeddings=train_emb, class_names=reader.class_names, eval_cfg=eval_cfg, runtime=runtime,
                judge=judge, log=log, **text)

        t0 = time.perf_counter()
        result = judge_generator(generator, gcfg, context.log.info)
        seconds = time.perf_counter() - t0
        rescored = _rescore_champion(client, name, version, result.protocol, judge_generator, Path(tmp) / "c",
                                     runtime.device, context.log)
    if seen is not None:
        result.results["val_captions_seen_in_train"] = seen
        if seen > 0:
            context.log.warning(f"{seen:.1%} of the val captions also occur in train: R-precision is not held out")
    head = core.headline(result.results)
    failures = gate_failures(result.results, config.gate())
    gate = {"passed": not failures, "failures": failures, "thresholds": config.gate().to_dict()}
    out_dir = paths.reports(dataset) / f"eval-v{version}"
    grid = png_bytes(image_grid(result.samples[:64], nrow=8, tile=max(32, gcfg.resolution)))
    write_bytes_atomic(out_dir / "samples.png", grid)
    human = review_summary(reviews_db(paths, dataset), model_version=version)  # `imagegen review` answers
    if human.get("answers"):
        result.results.update(human_fooling_rate=human.get("fooling_rate"),
                              human_prompt_match_rate=human.get("prompt_match_rate"), human_answers=human["answers"])
    record = {"dataset": dataset, "registered_model": name, "version": version, "time": time.time(),
              "headline": head, "protocol": result.protocol, "results": result.results, "quality_gate": gate,
              "human_review": human, "skipped": result.skipped, "seconds": result.seconds,
              "eval_config": core.eval_config_dict(eval_cfg), "generator_steps": summary.get("steps"),
              "shards": summary.get("shards"), "extractor_version": judge_version}
    if rescored:
        record["champion_rescored"] = rescored
    write_json_atomic(out_dir / "report.json", record)
    history_file = paths.reports(dataset) / HISTORY_FILE
    history = [r for r in (read_jsonl(history_file) if history_file.is_file() else []) if r.get("version") != version]
    append_jsonl(history_file, {"version": version, "time": record["time"], **head})
    history.append({"version": version, **head})
    hist_png = curves_png({k: [(int(r["version"]), r[k]) for r in history if k in r]
                           for k in ("fid", "kid", "precision", "recall", "conditional_accuracy")},
                          title=f"{dataset}: metrics by generator version", xlabel="registered version")
    write_bytes_atomic(out_dir / "history.png", hist_png)
    title = f"{name} v{version}"
    markdown = core.report_markdown(title, result.results, result.skipped, gate_failures=failures,
                                    protocol=result.protocol)
    write_bytes_atomic(out_dir / "report.md", markdown.encode())
    write_bytes_atomic(out_dir / "report.html", core.report_html(
        title, result.results, result.skipped, images={"fixed-seed samples": "samples.png"},
        history_png="history.png", meta={"dataset": dataset, "generator steps": summary.get("steps"),
                                         "samples": eval_cfg.num_samples, "real images per split": eval_cfg.num_real,
                                         "device": runtime.describe()["device_name"]}).encode())
    judged = {"version": version, "registered_model": name, "report": str(out_dir / "report.json")}
    write_json_atomic(paths.reports(dataset) / LATEST_FILE, judged)  # for people and tools
    write_json_atomic(_judged_file(paths, dataset, context.run_id), judged)  # for this run's promotion check
    with mlflow_tracker.start_run(paths, dataset, run_name="", run_id=summary["mlflow_run_id"]) as run:
        mlflow.log_metrics({f"eval_{k}": v for k, v in head.items()})
        mlflow.set_tags({f"eval.protocol.{k}": str(v) for k, v in result.protocol.items()})
        mlflow.log_artifacts(str(out_dir), artifact_path="evaluation")
        tag_scores(client, name, version, head, result.protocol)
        client.set_model_version_tag(name, version, GATE_TAG, "passed" if not failures else "rejected: " +
                                     "; ".join(failures))
        if failures:
            client.set_model_version_tag(name, version, REJECTED_TAG, "; ".join(failures))
        elif REJECTED_TAG in client.get_model_version(name, version).tags:  # re-evaluated and now passes
            client.delete_model_version_tag(name, version, REJECTED_TAG)
        link = mlflow_tracker.link(run)
    context.log.info(f"{title}: " + ", ".join(f"{k}={v:.4g}" for k, v in head.items()))
    if failures:
        context.log.warning(f"{title} is rejected by the quality gate: " + "; ".join(failures))
    return dg.MaterializeResult(metadata={
        **{k: round(v, 5) for k, v in head.items()},
        "protocol": result.protocol["key"],
        "champion_rescored": _rescored_note(rescored),
        "quality_gate": "passed" if not failures else "rejected: " + "; ".join(failures),
        "generator": title,
        "eval_seconds": round(seconds, 1),
        "summary": dg.MetadataValue.md(markdown),
        "samples": png_markdown(grid, "fixed-seed samples"),
        "history": png_markdown(hist_png, "metrics by version"),
        "report_html": dg.MetadataValue.path(str(out_dir / "report.html")),
        "report_json": dg.MetadataValue.path(str(out_dir / "report.json")),
        "mlflow_run": dg.MetadataValue.url(link),
    })


def _judged_file(paths, dataset: str, run_id: str) -> Path:
    """Which version this run's evaluation judged: the promotion check of the same run reads it back."""
    return paths.reports(dataset) / "runs" / f"evaluated-{run_id}.json"


def tag_scores(client: mlflow.MlflowClient, name: str, version: str, head: dict, protocol: dict) -> None:
    """The registry's record of a version's scores; the protocol tag says what they compare with."""
    for k, v in head.items():
        client.set_model_version_tag(name, version, METRIC_TAG + k, repr(float(v)))
    client.set_model_version_tag(name, version, PROTOCOL_TAG, protocol["key"])


def _registered_judge(paths, dataset: str, version: str | None, dst: Path, device) -> tuple[object | None, str | None]:
    """The extractor version a generator was trained with, from the registry. A generator trained before any
    extractor was registered falls back to the local file, named as unversioned in the protocol."""
    if not version or version == "None":
        local = fine_tuned_extractor(paths, dataset, device=device)
        return local, ("local extractor file (unversioned)" if local is not None else None)
    name = registered_name("extractor", dataset)
    model, _ = load_extractor(download_model_artifact(name, version, "extractor", dst), device=device)
    return model, f"{name} v{version}"


def _rescore_champion(client: mlflow.MlflowClient, name: str, version: str, protocol: dict, judge_generator,
                      dst: Path, device, log) -> dict | None:
    """Scores only compare under one protocol (N, reference pixels, detector, judge). When the champion was scored
    under another, judge its registered weights again under the candidate's, so promotion compares like with like."""
    champion = current_alias_holder(name, client=client)
    if champion is None or str(champion.version) == version or champion.tags.get(PROTOCOL_TAG) == protocol["key"]:
        return None
    log.info(f"champion v{champion.version} was scored under {champion.tags.get(PROTOCOL_TAG)!r}; re-scoring it "
             f"under {protocol['key']!r}")
    try:
        generator, gcfg = load_generator(download_model_artifact(name, str(champion.version), "generator", dst),
                                         device=device)
    except (MissingArtifact, OSError, ValueError) as exc:  # the candidate is still judged
        log.warning(f"cannot re-score champion v{champion.version} ({exc}); the promotion check will keep it")
        return {"version": str(champion.version), "error": str(exc)[:500], "headline": {}}
    result = judge_generator(generator, gcfg, log.info)
    if result.protocol["key"] != protocol["key"]:
        raise dg.Failure(f"re-scoring v{champion.version} gave protocol {result.protocol['key']!r}, not "
                         f"{protocol['key']!r}")
    head = core.headline(result.results)
    tag_scores(client, name, str(champion.version), head, result.protocol)
    return {"version": str(champion.version), "headline": head, "was": champion.tags.get(PROTOCOL_TAG)}


def _rescored_note(rescored: dict | None) -> str:
    if not rescored:
        return "no"
    fid = rescored["headline"].get("fid")
    return f"v{rescored['version']}: " + (f"fid {fid:.4g}" if fid is not None else f"failed ({rescored['error']})")


def promotion_guards(new_tags: dict) -> list[Guard]:
    """FID must improve; asked-for-class accuracy (when the model has one) must not drop."""
    guards = [Guard("fid", higher_is_better=False, strict=True,
                    spread="fid_std" if METRIC_TAG + "fid_std" in new_tags else None)]
    if METRIC_TAG + "conditional_accuracy" in new_tags:
        guards.append(Guard("conditional_accuracy", higher_is_better=True, strict=False))
    return guards


@dg.asset_check(asset=evaluation_report, blocking=False,
                description="Moves the MLflow alias `champion` to the evaluated generator only if its FID is lower "
                            "and its asked-for-class accuracy is not lower than the champion's; records why.")
def generator_promotion(context: dg.AssetCheckExecutionContext, storage: ImagegenStorage,
                        mlflow_tracker: MlflowTracker) -> dg.AssetCheckResult:
    paths = storage.paths
    dataset = context.partition_key if context.op_execution_context.has_partition_key else None
    if dataset is None:
        return dg.AssetCheckResult(passed=True, metadata={"note": "run per dataset partition to promote"})
    # this run's own record, not LATEST_FILE: another run may have rewritten that one since
    judged = _judged_file(paths, dataset, context.op_execution_context.run_id)
    if not judged.is_file():
        return dg.AssetCheckResult(passed=False, metadata={"error": "no evaluation report from this run"})
    info = json.loads(judged.read_text())
    use_store(mlflow_tracker.uri(paths))
    client = mlflow.MlflowClient()
    mv = client.get_model_version(info["registered_model"], info["version"])
    decision = promote_if_better(info["registered_model"], info["version"], promotion_guards(mv.tags), client=client)
    write_json_atomic(paths.promotion(dataset), {**info, "promoted": decision.promoted,
                                                                    "reason": decision.reason,
                                                                    "champion_before": decision.champion_before})
    context.log.info(decision.reason)
    return dg.AssetCheckResult(
        passed=decision.promoted, severity=dg.AssetCheckSeverity.WARN,
        metadata={"promoted": decision.promoted, "reason": decision.reason,
                  "champion_before": decision.champion_before or "none",
                  "champion_now": info["version"] if decision.promoted else (decision.champion_before or "none")})


evaluation_assets = [evaluation_report]
evaluation_checks = [generator_promotion]
