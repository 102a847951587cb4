"""Stage `evaluation_report` and the promotion decision: judge the latest registered generator by FID, KID,
precision/recall, MS-SSIM and the extractor's scores under a named protocol, write the report (JSON, Markdown,
HTML), record the scores in MLflow and the registry, and move `champion` only to a measurably better version."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from imagegen_pipeline.atomic import write_bytes_atomic, write_json_atomic
from imagegen_pipeline.ml import evaluation as core
from imagegen_pipeline.ml.caption_tokens import reads_tokens
from imagegen_pipeline.ml.dcgan import load_generator
from imagegen_pipeline.ml.embeddings_store import EMBEDDINGS_FILE, embedding_matrix, read_embeddings
from imagegen_pipeline.ml.extractor import load_extractor
from imagegen_pipeline.ml.grids import image_grid, png_bytes
from imagegen_pipeline.ml.metrics import append_jsonl, read_jsonl
from imagegen_pipeline.ml.metrics.feature_cache import FeatureCache
from imagegen_pipeline.ml.metrics.inception import InceptionFeatures, MissingDetectorError
from imagegen_pipeline.ml.quality_gate import QualityGate, gate_failures
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline.review import review_summary, reviews_db
from imagegen_pipeline.stages.artifacts import (EXTRACTOR_VERSION_TAG, FAMILY_TAG, fine_tuned_extractor,
                                                generator_summary)
from imagegen_pipeline.stages.common import curves_png, open_shards
from imagegen_pipeline.stages.composition_eval import (composed_labels, composed_real, composition_html,
                                                      composition_markdown, evaluate_composition)
from imagegen_pipeline.stages.composite_eval import (composite_html, composite_markdown, evaluate_composites,
                                                     with_human)
from imagegen_pipeline.stages.outputs import FilePath, Link, Markdown, Png, StageFailed, markdown_table
from imagegen_pipeline.tracking.registry import (GATE_TAG, METRIC_TAG, PROTOCOL_TAG, REJECTED_TAG, Guard,
                                                 MissingArtifact, registered_name)
from imagegen_pipeline.tracking.tracker import Tracker

EVALUATION_RUN_TAG = "imagegen.evaluation_run"  # on a generator version: the MLflow run of its last evaluation
TRAINING_RUN_TAG = "imagegen.training_run"  # on an evaluation run: the run that trained the judged version
LATEST_FILE = "latest_evaluation.json"  # in reports/<dataset>/: which version the last report judged
HISTORY_FILE = "history.jsonl"


@dataclass
class EvaluationJob:
    """One evaluation request: the core's settings, the gate, and how to run the detector."""

    eval_cfg: core.EvalConfig = field(default_factory=core.EvalConfig)
    gate: QualityGate = field(default_factory=QualityGate)
    device: str = "auto"
    detector_batch_size: int | None = None  # images per Inception forward pass; None = the device's (inception.py)


def evaluate_latest(paths: DataPaths, dataset: str, job: EvaluationJob, *, tracker: Tracker, run_tag: str,
                    log: Callable[[str], None], warn: Callable[[str], None]) -> dict:
    """Judge the generator the last dcgan_checkpoint registered; the metadata of the report."""
    runtime = resolve_runtime(job.device, cpu_channels_last=True)  # the extractor judge is its one NHWC user
    summary = generator_summary(paths, dataset)
    name, version = summary["registered_model"], str(summary["version"])
    reader = open_shards(paths, dataset)
    splits = {split: core.RealSplit(*reader.load_split(split), reader.read_column(split, "sha256"))
              for split in ("train", "val")}
    try:
        detector = InceptionFeatures(runtime=runtime, batch_size=job.detector_batch_size)
    except MissingDetectorError as exc:
        raise StageFailed(str(exc)) from exc
    train_emb = None
    if (paths.embeddings(dataset) / EMBEDDINGS_FILE).is_file():
        train_emb = embedding_matrix(read_embeddings(paths.embeddings(dataset), split="train"))
    with tempfile.TemporaryDirectory(prefix="imagegen-eval-") as tmp:
        # the registered artifacts, by version: the generator users are served, judged by the extractor version
        # it was trained with (tag), so a candidate and the champion it is compared with share one judge
        generator, gcfg = load_generator(tracker.model_artifact(name, version, "generator", Path(tmp) / "g"),
                                         device=runtime.device)
        judge_version = tracker.version(name, version).tags.get(EXTRACTOR_VERSION_TAG)
        extractor, judge = _registered_judge(paths, dataset, tracker, judge_version, Path(tmp) / "x", runtime.device)
        captions: dict = {}  # the held-out captions, read when the first text model is judged

        def judge_generator(g, cfg, log) -> core.EvalResult:
            """Each model under its own conditioning: a text model (candidate or champion) on held-out captions."""
            if cfg.conditioning == "text" and not captions:
                captions.update(_held_out_captions(paths, dataset, train_emb is not None))
            text = {k: v for k, v in captions.items() if k not in (SEEN_KEY, VAL_CAPTIONS_KEY)} \
                if cfg.conditioning == "text" else {}
            if reads_tokens(cfg):  # the same held-out captions, as the token states this model reads
                text["gen_conds"] = _held_out_tokens(paths, dataset, captions[VAL_CAPTIONS_KEY], cfg.text_tokens)
            return core.evaluate_generator(
                g, cfg, train=splits["train"], val=splits["val"], detector=detector,
                cache=FeatureCache(paths.detector_cache(dataset)), extractor=extractor,
                train_embeddings=train_emb, class_names=reader.class_names, eval_cfg=job.eval_cfg, runtime=runtime,
                judge=judge, log=log, **text)

        t0 = time.perf_counter()
        result = judge_generator(generator, gcfg, log)
        seconds = time.perf_counter() - t0
        composite = composition = None
        if gcfg.conditioning == "text":
            composition = _composition(job, paths, dataset, generator, gcfg, splits, result, runtime,
                                       report_dir(paths, dataset, version), log)
        if composition is not None:
            result.skipped["composite_prompts"] = "the data has composed pictures: the concept judge's composition " \
                                                  "figures stand in for the caption-bank composite prompts"
        elif gcfg.conditioning == "text":
            composite = _composite_prompts(job, generator, gcfg, extractor, captions.get("caption_bank"),
                                           splits["train"], result, runtime, report_dir(paths, dataset, version), log)
        # must be 0: held-out captions are never trained on
        seen = captions.get(SEEN_KEY) if gcfg.conditioning == "text" else None
        rescored = _rescore_champion(tracker, name, version, result.protocol, judge_generator, Path(tmp) / "c",
                                     runtime.device, log, warn)
    if seen is not None:
        result.results["val_captions_seen_in_train"] = seen
        if seen > 0:
            warn(f"{seen:.1%} of the val captions also occur in train: R-precision is not held out")
    human = review_summary(reviews_db(paths, dataset), model_version=version)  # `imagegen review` answers
    result.results.update(human_results(human))
    if composite is not None:
        with_human(composite, human["prompt_questions"]["by_prompt"])
        result.results.update(composite["summary"])
    if composition is not None:
        result.results.update(composition["summary"])
    failures = gate_failures(result.results, job.gate, conditioning=gcfg.conditioning)
    head = core.headline(result.results)
    families = family_table(tracker, name, result.protocol["key"], current={"version": version, **head})
    report = _write_report(paths, dataset, job, summary, result, head, failures, human, judge_version, rescored,
                           families, resolution=gcfg.resolution, device=runtime.describe()["device_name"],
                           run_tag=run_tag, composite=composite, composition=composition)
    # a run of its own, not the training run reopened: MLflow marks the run an exception leaves FAILED, and a
    # failed evaluation says nothing about the training
    with tracker.run(dataset, run_name=f"eval-v{version}",
                     tags=evaluation_tags(name, version, tracker.version(name, version).run_id, run_tag)) as run:
        run.log_metrics({f"eval_{k}": v for k, v in head.items()})
        run.set_tags({f"eval.protocol.{k}": v for k, v in result.protocol.items()})
        run.log_artifacts(report["dir"], "evaluation")
        record_scores(tracker, name, version, head, result.protocol, run_id=run.id)
        tracker.tag_version(name, version, {GATE_TAG: "passed" if not failures else "rejected: " + "; ".join(failures),
                                            EVALUATION_RUN_TAG: run.id})
        if failures:
            tracker.tag_version(name, version, {REJECTED_TAG: "; ".join(failures)})
        else:  # re-evaluated and now passes
            tracker.untag_version(name, version, REJECTED_TAG)
    title = f"{name} v{version}"
    log(f"{title}: " + ", ".join(f"{k}={v:.4g}" for k, v in head.items()))
    if failures:
        warn(f"{title} is rejected by the quality gate: " + "; ".join(failures))
    return {
        **{k: round(v, 5) for k, v in head.items()},
        "protocol": result.protocol["key"],
        "families": Markdown(families_markdown(families)),
        **({"ablations": Markdown(report["ablations"])} if report["ablations"] else {}),
        "champion_rescored": _rescored_note(rescored),
        "quality_gate": "passed" if not failures else "rejected: " + "; ".join(failures),
        "generator": title,
        "eval_seconds": round(seconds, 1),
        "summary": Markdown(report["markdown"]),
        "samples": Png(report["samples_png"], "fixed-seed samples"),
        "history": Png(report["history_png"], "metrics by version"),
        "report_html": FilePath(str(report["dir"] / "report.html")),
        "report_json": FilePath(str(report["dir"] / "report.json")),
        "mlflow_run": Link(run.link),
    }


def human_results(human: dict) -> dict:
    """The review page's figures for results/headline: the fooling rate from real-vs-generated pairs, and the
    prompt-match rate from every human yes/no on whether a generated picture shows its prompt (the pair
    question "do both show the prompt?" and the single-picture "does this picture show: <prompt>?")."""
    out = {}
    if human.get("answers"):
        out.update(human_fooling_rate=human.get("fooling_rate"), human_answers=human["answers"])
    if human.get("prompt_match_answers"):
        out.update(human_prompt_match_rate=human.get("prompt_match_rate"),
                   human_prompt_match_answers=human["prompt_match_answers"])
    return out


def report_dir(paths: DataPaths, dataset: str, version: str) -> Path:
    return paths.reports(dataset) / f"eval-v{version}"


def _composition(job: EvaluationJob, paths: DataPaths, dataset: str, generator, gcfg, splits: dict,
                 result: core.EvalResult, runtime, out_dir: Path, log) -> dict | None:
    """A text model's composition record (stages/composition_eval.py) where the data has composed pictures;
    None otherwise (or with the reason in skipped)."""
    labels = composed_labels(paths.manifest(dataset))
    real = composed_real(labels, [splits["train"], splits["val"]]) if labels else None
    seen = composed_real(labels, [splits["train"]]) if labels else None
    if real is None or seen is None:
        return None
    if job.eval_cfg.composition_images < 1:
        result.skipped["composition"] = "composition_images is 0"
        return None
    from imagegen_pipeline.ml.text_encoder import MissingTextModelError, TextEncoder

    t = time.perf_counter()
    try:
        record = evaluate_composition(generator, gcfg, real, encoder=TextEncoder(),
                                      train_images=seen.images,
                                      images_per_prompt=job.eval_cfg.composition_images, seed=job.eval_cfg.seed,
                                      runtime=runtime, out_dir=out_dir)
    except (MissingTextModelError, ValueError) as exc:  # the gate then says the figures are missing
        result.skipped["composition"] = str(exc)[:500]
        return None
    result.seconds["composition"] = round(time.perf_counter() - t, 4)
    s = record["summary"]
    log(f"composition: held-out pairs both right {s.get('heldout_both_right', float('nan')):.2f} (real "
        f"{s.get('heldout_both_right_real', float('nan')):.2f}), \"a cat with a hat\" {s['cat_with_hat_right']}/"
        f"{s['cat_with_hat_of']}")
    return record


def _composite_prompts(job: EvaluationJob, generator, gcfg, extractor, bank, train: core.RealSplit,
                       result: core.EvalResult, runtime, out_dir: Path, log) -> dict | None:
    """A text model's composite-prompt record (stages/composite_eval.py), or None with the reason in skipped."""
    cfg = job.eval_cfg
    if cfg.composite_images < 1:
        result.skipped["composite_prompts"] = "composite_images is 0"
        return None
    if extractor is None or bank is None:
        result.skipped["composite_prompts"] = ("needs the fine-tuned extractor and the caption bank "
                                               "(image_embeddings + caption_embeddings)")
        return None
    from imagegen_pipeline.ml.prompt_score import PromptScorer
    from imagegen_pipeline.ml.text_encoder import MissingTextModelError, TextEncoder

    try:
        scorer = PromptScorer(extractor, bank, encoder=TextEncoder(), device=job.device)
    except MissingTextModelError as exc:
        result.skipped["composite_prompts"] = str(exc)
        return None
    t = time.perf_counter()
    try:
        record = evaluate_composites(generator, gcfg, scorer, train_images=train.images, train_sha256=train.sha256,
                                     images_per_prompt=cfg.composite_images, candidates=cfg.composite_candidates,
                                     seed=cfg.seed, runtime=runtime, out_dir=out_dir)
    except ValueError as exc:  # a report section: its failure is said, the evaluation stands
        result.skipped["composite_prompts"] = str(exc)[:500]
        return None
    result.seconds["composite_prompts"] = round(time.perf_counter() - t, 4)
    log(f"composite prompts: judge score {record['summary']['composite_prompt_score']:.4f}, both concepts in "
        f"{record['summary']['composite_concept_share']:.0%} of the picks")
    return record


def evaluation_tags(name: str, version: str, training_run: str | None, run_tag: str) -> dict[str, str]:
    """What links an evaluation's MLflow run to the version it judged and to the run that trained that version."""
    return {"imagegen.stage": "evaluation_report", "imagegen.dagster_run": run_tag,
            "imagegen.registered_model": name, "imagegen.model_version": str(version),
            TRAINING_RUN_TAG: training_run or "unknown"}


def _write_report(paths: DataPaths, dataset: str, job: EvaluationJob, summary: dict, result, head: dict,
                  failures: list[str], human: dict, judge_version, rescored, families: list[dict], *,
                  resolution: int, device: str, run_tag: str, composite: dict | None = None,
                  composition: dict | None = None) -> dict:
    """report.json/.md/.html, the sample grid and the by-version history under reports/<dataset>/eval-v<N>/."""
    name, version = summary["registered_model"], str(summary["version"])
    ablations = read_ablations(paths, dataset)
    gate = {"passed": not failures, "failures": failures, "thresholds": job.gate.to_dict()}
    out_dir = report_dir(paths, dataset, version)
    grid = png_bytes(image_grid(result.samples[:64], nrow=8, tile=max(32, resolution)))
    write_bytes_atomic(out_dir / "samples.png", grid)
    record = {"dataset": dataset, "registered_model": name, "version": version, "time": time.time(),
              "headline": head, "protocol": result.protocol, "results": result.results, "quality_gate": gate,
              "human_review": human, "skipped": result.skipped, "seconds": result.seconds,
              "eval_config": core.eval_config_dict(job.eval_cfg), "generator_steps": summary.get("steps"),
              "shards": summary.get("shards"), "extractor_version": judge_version, "families": families,
              "ablations": ablations}
    if rescored:
        record["champion_rescored"] = rescored
    if composite is not None:
        record["composite_prompts"] = composite
    if composition is not None:
        record["composition"] = composition
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
    tables = {"Model families (best version of each under this protocol)": family_rows(families),
              **{f"Ablation: {a['experiment']} ({ABLATION_SCRIPT})": (a["columns"], a["cells"]) for a in ablations}}
    sections = {caption: f"**{caption}**\n\n" + markdown_table(*table) for caption, table in tables.items()}
    markdown = core.report_markdown(title, result.results, result.skipped, gate_failures=failures,
                                    protocol=result.protocol) + "".join("\n\n" + md for md in sections.values())
    if composite is not None:
        markdown += "\n\n" + composite_markdown(composite)
    if composition is not None:
        markdown += "\n\n" + composition_markdown(composition)
    write_bytes_atomic(out_dir / "report.md", markdown.encode())
    write_bytes_atomic(out_dir / "report.html", core.report_html(
        title, result.results, result.skipped, images={"fixed-seed samples": "samples.png"}, tables=tables,
        sections=(composite_html(composite) if composite is not None else "")
        + (composition_html(composition) if composition is not None else ""),
        history_png="history.png", meta={"dataset": dataset, "generator steps": summary.get("steps"),
                                         "samples": job.eval_cfg.num_samples,
                                         "real images per split": job.eval_cfg.num_real, "device": device}).encode())
    judged = {"version": version, "registered_model": name, "report": str(out_dir / "report.json")}
    write_json_atomic(paths.reports(dataset) / LATEST_FILE, judged)  # for people and tools
    write_json_atomic(judged_file(paths, dataset, run_tag), judged)  # for this run's promotion decision
    return {"dir": out_dir, "markdown": markdown, "samples_png": grid, "history_png": hist_png,
            "ablations": "\n\n".join(md for caption, md in sections.items() if caption.startswith("Ablation"))}


FAMILY_COLUMNS = ("fid", "kid", "precision", "recall", "ms_ssim_ratio", "conditional_accuracy")


def family_table(tracker: Tracker, name: str, protocol_key: str, current: dict) -> list[dict]:
    """One row per model family (dcgan, vae): its best-FID version scored under this protocol, its scores and its
    training wall time. `current`: the version being judged, whose tags are written only after the report."""
    best: dict[str, dict] = {}
    for mv in tracker.versions(name):
        tags = mv.tags
        scores = {k: float(tags[METRIC_TAG + k]) for k in FAMILY_COLUMNS if METRIC_TAG + k in tags}
        if str(mv.version) == str(current["version"]):
            scores = {k: current[k] for k in FAMILY_COLUMNS if k in current}
        elif tags.get(PROTOCOL_TAG) != protocol_key:
            continue
        if "fid" not in scores:
            continue
        family = tags.get(FAMILY_TAG, "dcgan")  # versions registered before families existed are DCGANs
        if family not in best or scores["fid"] < best[family]["fid"]:
            seconds = tracker.run_metric(mv.run_id, "train_seconds") if mv.run_id else None
            best[family] = {"family": family, "version": str(mv.version), **scores, "train_seconds": seconds}
    return sorted(best.values(), key=lambda r: r["fid"])


def _cell(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def family_rows(rows: list[dict]) -> tuple[tuple[str, ...], list[list[str]]]:
    """The family table for people (columns, cells): best FID first."""
    cols = ("family", "version", *FAMILY_COLUMNS, "train_seconds")
    return cols, [[_cell(r.get(c)) for c in cols] for r in rows]


def families_markdown(rows: list[dict]) -> str:
    return "**Model families** (best version of each under this protocol)\n\n" + markdown_table(*family_rows(rows))


ABLATION_SCRIPT = "bench/ablations.py"


def read_ablations(paths: DataPaths, dataset: str) -> list[dict]:
    """The ablation tables measured on this dataset (`bench/ablations.py` writes reports/<dataset>/ablation-*.json):
    what a design choice (feature head, transfer, FreezeD) bought here, shown beside the scores it explains."""
    found = []
    for f in sorted(paths.reports(dataset).glob("ablation-*.json")):
        try:
            rows = json.loads(f.read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a half-written or foreign file: the report is not the place to fail on it
        cols = [c for c in ABLATION_COLUMNS if any(r.get(c) is not None for r in rows)]
        found.append({"experiment": f.stem.removeprefix("ablation-"), "rows": rows, "columns": cols,
                      "cells": [[_cell(r.get(c)) for c in cols] for r in rows]})
    return found


ABLATION_COLUMNS = ("variant", "version", "fid", "fid_std", "kid", "precision", "recall", "conditional_accuracy",
                    "cas_accuracy", "ms_ssim_ratio", "train_seconds", "protocol")


def judged_file(paths: DataPaths, dataset: str, run_tag: str) -> Path:
    """Which version this run's evaluation judged: the promotion of the same run reads it back."""
    return paths.reports(dataset) / "runs" / f"evaluated-{run_tag}.json"


def record_scores(tracker: Tracker, name: str, version: str, head: dict, protocol: dict,
                  run_id: str | None = None) -> None:
    """The registry's record of a version's scores (tags; the protocol tag says what they compare with) and, with
    the run, the same figures as metrics of the version's LoggedModel."""
    tracker.tag_version(name, version, {**{METRIC_TAG + k: repr(float(v)) for k, v in head.items()},
                                        PROTOCOL_TAG: protocol["key"]})
    if run_id is not None:
        tracker.log_model_metrics(tracker.version(name, version), run_id, {f"eval_{k}": v for k, v in head.items()})


SEEN_KEY = "val_captions_seen_in_train"  # share of val captions also in train: reported, not passed to the core
VAL_CAPTIONS_KEY = "val_captions"  # the held-out captions' texts, for a token model's token states


def _held_out_tokens(paths: DataPaths, dataset: str, val_captions: list[str], tokens: int) -> np.ndarray:
    """The held-out captions' token states (M, tokens, D), rows as `_held_out_captions`' text_conds."""
    from imagegen_pipeline.ml.caption_tokens import CaptionTokens

    try:
        states, found = CaptionTokens.read(paths.embeddings(dataset)).lookup(val_captions, tokens)
    except (FileNotFoundError, ValueError) as exc:
        raise StageFailed(f"{dataset}: a token-conditioned model is evaluated on the held-out captions' token "
                          f"states: {exc}") from None
    if not found.all():
        raise StageFailed(f"{dataset}: {int((~found).sum())} held-out captions have no token states (stale "
                          "caption_tokens.parquet): rematerialize caption_embeddings")
    return states


def _plain_subset(paths: DataPaths, dataset: str, val_sha256: list[str]) -> dict:
    """On data with composed pictures, the plain pictures' captions as an R-precision subset of their own
    (r_precision_plain): the composed ones are the concept judge's to score. {} elsewhere."""
    labels = composed_labels(paths.manifest(dataset))
    if not labels:
        return {}
    return {"caption_subsets": {"plain": np.array([sha not in labels for sha in val_sha256])}}


def _held_out_captions(paths: DataPaths, dataset: str, with_bank: bool) -> dict:
    """A text model is judged on the val split's captions; the train split's captions + image embeddings are
    the caption bank that R-precision describes generated images with. A caption's group (without skin tones)
    keeps an emoji's tone variants from being each other's R-precision negatives."""
    from imagegen_pipeline.datasets.emoji import caption_group
    from imagegen_pipeline.ml.prompt_score import CAPTIONS_FILE, CaptionBank, read_captions

    if not (paths.embeddings(dataset) / CAPTIONS_FILE).is_file():
        raise StageFailed(f"{dataset}: the generator is text-conditioned and is evaluated on held-out captions; "
                          f"no {paths.embeddings(dataset) / CAPTIONS_FILE}: materialize caption_embeddings")
    val = read_captions(paths.embeddings(dataset), split="val")
    train = read_captions(paths.embeddings(dataset), split="train")
    seen = float(val["caption"].isin(set(train["caption"])).mean()) if len(val) else 0.0
    if len(val) < 2:
        raise StageFailed(f"{dataset}: {len(val)} val captions; a text model needs held-out captions to be judged on")
    bank = None
    if with_bank:
        try:
            bank = CaptionBank.from_frames(read_embeddings(paths.embeddings(dataset), split="train"), train)
        except ValueError:  # embeddings and captions from different shards: r_precision is skipped, says why
            bank = None
    return {"text_conds": embedding_matrix(val), "caption_ids": val["sha256"].tolist(), "caption_bank": bank,
            VAL_CAPTIONS_KEY: val["caption"].tolist(),
            "caption_groups": [caption_group(c) for c in val["caption"]], SEEN_KEY: seen,
            **_plain_subset(paths, dataset, val["sha256"].tolist())}


def _registered_judge(paths: DataPaths, dataset: str, tracker: Tracker, version: str | None, dst: Path,
                      device) -> tuple[object | None, str | None]:
    """The extractor version a generator was trained with, from the registry. A generator trained before any
    extractor was registered falls back to the local file, named as unversioned in the protocol."""
    if not version or version == "None":
        local = fine_tuned_extractor(paths, dataset, device=device)
        return local, ("local extractor file (unversioned)" if local is not None else None)
    name = registered_name("extractor", dataset)
    model, _ = load_extractor(tracker.model_artifact(name, version, "extractor", dst), device=device)
    return model, f"{name} v{version}"


def _rescore_champion(tracker: Tracker, name: str, version: str, protocol: dict, judge_generator, dst: Path, device,
                      log, warn) -> dict | None:
    """Scores only compare under one protocol (N, reference pixels, detector, judge). When the champion was scored
    under another, judge its registered weights again under the candidate's, so promotion compares like with like."""
    champion = tracker.alias_holder(name)
    if champion is None or str(champion.version) == version or champion.tags.get(PROTOCOL_TAG) == protocol["key"]:
        return None
    log(f"champion v{champion.version} was scored under {champion.tags.get(PROTOCOL_TAG)!r}; re-scoring it "
        f"under {protocol['key']!r}")

    def cannot(exc: Exception, **known) -> dict:  # the candidate is still judged; the champion stays
        warn(f"cannot re-score champion v{champion.version} ({exc}); the promotion will keep it")
        return {"version": str(champion.version), "error": str(exc)[:500], "headline": {}, **known}

    try:
        generator, gcfg = load_generator(tracker.model_artifact(name, str(champion.version), "generator", dst),
                                         device=device)
    except (MissingArtifact, OSError, ValueError) as exc:
        return cannot(exc)
    try:
        result = judge_generator(generator, gcfg, log)
    except StageFailed as exc:  # e.g. a text champion whose held-out captions are gone
        return cannot(exc, conditioning=gcfg.conditioning)
    if result.protocol["key"] != protocol["key"]:
        raise StageFailed(f"re-scoring v{champion.version} gave protocol {result.protocol['key']!r}, not "
                          f"{protocol['key']!r}")
    head = core.headline(result.results)
    record_scores(tracker, name, str(champion.version), head, result.protocol)
    return {"version": str(champion.version), "headline": head, "was": champion.tags.get(PROTOCOL_TAG),
            "conditioning": gcfg.conditioning}


def _rescored_note(rescored: dict | None) -> str:
    if not rescored:
        return "no"
    fid = rescored["headline"].get("fid")
    how = " (text-conditioned, on the held-out captions)" if rescored.get("conditioning") == "text" else ""
    return f"v{rescored['version']}{how}: " + (f"fid {fid:.4g}" if fid is not None else f"failed ({rescored['error']})")


def promotion_guards(new_tags: dict) -> list[Guard]:
    """FID must improve; asked-for-class accuracy must not drop where both models have one (an unconditional
    champion has none: a class model may replace it on FID)."""
    return [Guard("fid", higher_is_better=False, strict=True,
                  spread="fid_std" if METRIC_TAG + "fid_std" in new_tags else None),
            Guard("conditional_accuracy", higher_is_better=True, strict=False, optional=True)]


def promote_judged(paths: DataPaths, dataset: str, *, run_tag: str, tracker: Tracker,
                   log: Callable[[str], None]) -> dict:
    """Move `champion` to the version this run's evaluation judged (materialized on its own: the last evaluated
    one), only if it passed the gate and beats the champion; the decision, also written to the promotion file."""
    judged = judged_file(paths, dataset, run_tag)  # this run's own record: another run may rewrite LATEST_FILE
    source = "this run's evaluation"
    if not judged.is_file():
        judged, source = paths.reports(dataset) / LATEST_FILE, "the last evaluation (an earlier run)"
    if not judged.is_file():
        raise StageFailed(f"{dataset}: no evaluation to promote from; materialize evaluation_report first")
    info = json.loads(judged.read_text())
    name, version = info["registered_model"], info["version"]
    decision = tracker.promote_if_better(name, version, promotion_guards(tracker.version(name, version).tags))
    write_json_atomic(paths.promotion(dataset), {**info, "promoted": decision.promoted, "reason": decision.reason,
                                                 "champion_before": decision.champion_before})
    log(decision.reason)
    champion = version if decision.promoted else decision.champion_before
    return {"promoted": decision.promoted, "reason": decision.reason, "judged": f"{name} v{version}",
            "judged_in": source, "champion_before": decision.champion_before or "none",
            "champion_now": champion or "none",
            **({"mlflow_model": Link(tracker.model_link(name, champion))} if champion else {})}
