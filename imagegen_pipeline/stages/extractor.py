"""Stages `feature_extractor` and `image_embeddings`: ImageNet MobileNetV2 fine-tuned per dataset and registered
as imagegen-extractor-<dataset>, then every accepted image described as a 1280-d vector that the GAN, the
evaluation and near-duplicate search use."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from imagegen_pipeline.atomic import write_json_atomic
from imagegen_pipeline.ml import extractor as core
from imagegen_pipeline.ml.quality_checks import accuracy_above_floor
from imagegen_pipeline.ml.embeddings_store import write_embeddings
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline.stages.artifacts import EXTRACTOR_FILE, EXTRACTOR_SUMMARY, extractor_summary
from imagegen_pipeline.stages.common import curves_png, open_shards, png_to_array, shards_stamp
from imagegen_pipeline.stages.outputs import FilePath, Link, Markdown, Png, StageFailed, markdown_table
from imagegen_pipeline.tracking.registry import GATE_TAG, REJECTED_TAG, Guard, registered_name
from imagegen_pipeline.tracking.tracker import Tracker

SERVING_CODE = Path(__file__).resolve().parent.parent / "serving" / "extractor_model.py"


def serving_example(shape: tuple[int, int, int]) -> np.ndarray:
    """One black uint8 image of the shards' (C, H, W), logged with the model: MLflow derives the signature it checks
    requests against from it, and stops warning that it has none."""
    return np.zeros((1, *shape), np.uint8)


def train_feature_extractor(paths: DataPaths, dataset: str, cfg: core.ExtractorConfig, *, device: str,
                            allow_download: bool, min_val_accuracy: float, tracker: Tracker, run_tag: str,
                            log: Callable[[str], None]) -> dict:
    """Fine-tune and register with its gate verdict (the floor its blocking check applies); the metadata of what
    was made. `extractor_champion` promotes it, after the check passed."""
    reader = open_shards(paths, dataset)
    runtime = resolve_runtime(device, cpu_channels_last=True)
    try:
        imagenet, source = core.find_mobilenet_weights(allow_download=allow_download)
    except core.MissingWeightsError as exc:
        raise StageFailed(str(exc)) from exc
    x_train, y_train = reader.load_split("train")
    x_val, y_val = reader.load_split("val")
    log(f"{dataset}: {len(x_train)} train / {len(x_val)} val images {reader.shape}, {len(reader.class_names)} "
        f"classes, on {runtime.describe()}; ImageNet weights from {source}")
    model_file = paths.models(dataset) / EXTRACTOR_FILE
    stamp = shards_stamp(reader)
    with tracker.run(dataset, run_name=f"extractor-{run_tag[:8]}", system_metrics=True, tags={
            "imagegen.stage": "feature_extractor", "imagegen.dagster_run": run_tag, "imagegen.shards": stamp}) as run:
        run.log_params({**cfg.to_dict(), **runtime.describe(), "weights_source": source,
                        "train_images": len(x_train), "val_images": len(x_val)})
        run.log_shards(reader.dir, stamp, dataset)

        def on_epoch(row: dict) -> None:
            prefix = "baseline_" if row["phase"] == "scratch" else ""
            run.log_metrics({f"{prefix}{k}": v for k, v in row.items()
                             if isinstance(v, (int, float)) and k not in ("epoch", "step")}, step=int(row["step"]))

        t0 = time.perf_counter()
        report = core.train_extractor(x_train, y_train, x_val, y_val, cfg, runtime=runtime,
                                      class_names=reader.class_names, weights_state_dict=imagenet,
                                      weights_source=source, on_epoch=on_epoch, log=log)
        seconds = time.perf_counter() - t0
        summary = {"dataset": dataset, **report.summary(), "class_names": reader.class_names,
                   "shards": stamp, "mlflow_run_id": run.id, "seconds": round(seconds, 1),
                   "min_val_accuracy": min_val_accuracy, "config": cfg.to_dict(), "runtime": runtime.describe()}
        core.save_extractor(model_file, report.model, summary)
        val_acc = summary.get("val_accuracy")
        run.log_metrics({k: v for k, v in summary.items() if k in ("val_accuracy", "baseline_val_accuracy",
                                                                   "transfer_gain")} | {"train_seconds": seconds})
        confusion = None
        if report.finetune is not None:
            confusion = core.confusion_png(report.finetune.confusion, reader.class_names)
            run.log_image(png_to_array(confusion), file="confusion_matrix.png")
        curves = curves_png(_curve_series(report), title=f"{dataset}: validation accuracy", xlabel="optimizer step")
        run.log_image(png_to_array(curves), file="accuracy_curves.png")
        name = registered_name("extractor", dataset)
        passed, floor = accuracy_above_floor(summary, min_val_accuracy)
        gate = "passed" if passed else f"rejected: {floor['reason']}"
        mv = run.register_code_model(code_file=SERVING_CODE, artifacts={"extractor": str(model_file)}, name=name,
                                     example=serving_example(reader.shape),
                                     metadata={"dataset": dataset, "shards": stamp},
                                     metrics={"val_accuracy": val_acc} if _num(val_acc) is not None else {},
                                     tags={"imagegen.shards": stamp, "imagegen.fine_tuned": str(report.fine_tuned),
                                           GATE_TAG: gate, **({} if passed else {REJECTED_TAG: floor["reason"]})})
        summary.update(registered_model=name, registered_version=mv.version, quality_gate=gate)
        write_json_atomic(paths.models(dataset) / EXTRACTOR_SUMMARY, summary)
    return {
        "fine_tuned": report.fine_tuned,
        "val_accuracy": _num(val_acc),
        "baseline_val_accuracy (from scratch, same steps)": _num(summary.get("baseline_val_accuracy")),
        "transfer_gain": _num(summary.get("transfer_gain")),
        "train_seconds": round(seconds, 1),
        "device": runtime.describe()["device_name"],
        "weights_source": source,
        "registered_model": f"{name} v{mv.version}",
        "quality_gate": gate,
        "mlflow_run": Link(run.link),
        "mlflow_model": Link(tracker.model_link(name, mv.version)),
        "model_file": FilePath(str(model_file)),
        "accuracy_curves": Png(curves, "validation accuracy per epoch"),
        "epochs": Markdown(markdown_table(
            ["run", "phase", "epoch", "train_loss", "val_acc"],
            [("baseline" if r["phase"] == "scratch" else "fine-tune", r["phase"], r["epoch"], f"{r['train_loss']:.4f}",
              f"{r['val_acc']:.4f}") for r in _history(report)])),
        **({} if report.fine_tuned else {
            "note": f"not fine-tuned: {report.reason}; embeddings are ImageNet features as they are"}),
        **({} if confusion is None else {"confusion_matrix": Png(confusion, "confusion matrix (validation)")}),
    }


def promote_extractor(paths: DataPaths, dataset: str, *, tracker: Tracker, log: Callable[[str], None]) -> dict:
    """Move `champion` to the version feature_extractor registered last, if it passed the floor and its val
    accuracy is not below the champion's; the decision, also written into the extractor summary."""
    summary = extractor_summary(paths, dataset)
    if summary is None or "registered_version" not in summary:
        raise StageFailed(f"{dataset}: no registered extractor to promote; materialize feature_extractor first")
    name, version = summary["registered_model"], str(summary["registered_version"])
    decision = tracker.promote_if_better(name, version, [Guard("val_accuracy", higher_is_better=True,
                                                               strict=False)])
    write_json_atomic(paths.models(dataset) / EXTRACTOR_SUMMARY,
                      {**summary, "champion": decision.promoted, "promotion": decision.reason})
    log(decision.reason)
    champion = version if decision.promoted else decision.champion_before
    return {"promoted": decision.promoted, "reason": decision.reason, "judged": f"{name} v{version}",
            "champion_before": decision.champion_before or "none", "champion_now": champion or "none",
            **({"mlflow_model": Link(tracker.model_link(name, champion))} if champion else {})}


def embed_dataset(paths: DataPaths, dataset: str, *, device: str, batch_size: int | None,
                  near_duplicate_cosine: float, log: Callable[[str], None]) -> dict:
    """Every accepted image's embedding as Parquet, a 2-D map and the near-duplicate pairs."""
    reader = open_shards(paths, dataset)
    model_file = paths.models(dataset) / EXTRACTOR_FILE
    if not model_file.is_file():
        raise StageFailed(f"{dataset}: no {model_file}; materialize feature_extractor first")
    model, meta = core.load_extractor(model_file)
    meta = {**meta, **(extractor_summary(paths, dataset) or {})}  # the registered version is known only after save
    runtime = resolve_runtime(device, cpu_channels_last=True)
    t0 = time.perf_counter()
    parts, n = [], 0
    for split in reader.description["splits"]:
        if not reader.num_rows(split):
            continue
        images, labels = reader.load_split(split)
        emb, _ = core.embed_images(model, images, runtime=runtime, batch_size=batch_size)
        parts.append({"split": split, "sha256": reader.read_column(split, "sha256"),
                      "label": reader.read_column(split, "label"), "label_idx": labels.numpy(), "embedding": emb})
        n += len(images)
        log(f"{dataset}/{split}: {len(images)} embeddings")
    seconds = time.perf_counter() - t0
    out = write_embeddings(paths.embeddings(dataset), parts, extractor=meta)
    vectors = np.concatenate([p["embedding"] for p in parts])  # the rows just written, in file order
    map_png = core.embedding_map_png(core.pca_2d(vectors), np.concatenate([p["label_idx"] for p in parts]),
                                     reader.class_names)
    dups = core.near_duplicates(vectors, [h for p in parts for h in p["sha256"]], threshold=near_duplicate_cosine)
    rows = [(a[:12], b[:12], f"{c:.4f}") for a, b, c in dups[:25]]
    return {
        "dagster/row_count": n,
        "dim": int(vectors.shape[1]),
        "images_per_second": round(n / seconds, 1) if seconds else 0.0,
        "device": runtime.describe()["device_name"],
        "extractor": f"{meta.get('registered_model', 'extractor')} v{meta.get('registered_version', '?')}",
        "near_duplicate_pairs": len(dups),
        "near_duplicates": Markdown(markdown_table(["sha256 a", "sha256 b", "cosine"], rows)
                                    if rows else "none above the threshold"),
        "embedding_map": Png(map_png, "PCA of the embeddings, coloured by class"),
        "path": FilePath(str(out)),
    }


def _num(v: float | None) -> float | None:
    """A finite figure rounded for people, else None: NaN (no labelled val rows) is "not measured", never a score."""
    return None if v is None or not math.isfinite(float(v)) else round(float(v), 4)


def _history(report: core.ExtractorReport) -> list[dict]:
    return [r for res in (report.finetune, report.baseline) if res is not None for r in res.history]


def _curve_series(report: core.ExtractorReport) -> dict[str, list[tuple[float, float]]]:
    """Validation accuracy against optimizer steps: fine-tuning and the from-scratch baseline on one plot."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in _history(report):
        series.setdefault("from scratch" if r["phase"] == "scratch" else "fine-tuned", []).append(
            (r["step"], r["val_acc"]))
    return series
