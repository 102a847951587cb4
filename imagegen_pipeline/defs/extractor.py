"""Assets `feature_extractor` and `image_embeddings`: ImageNet MobileNetV2 fine-tuned per dataset, then every
accepted image described as a 1280-d vector the GAN, the evaluation and near-duplicate search use."""


import json
import math
import time
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
from pydantic import Field

from imagegen_pipeline.atomic import write_json_atomic
from imagegen_pipeline.defs.common import curves_png, dataset_of, open_shards, shards_stamp
from imagegen_pipeline.defs.artifacts import EXTRACTOR_FILE, FEATURE_EXTRACTOR, IMAGE_SHARDS
from imagegen_pipeline.defs.artifacts import EXTRACTOR_SUMMARY as SUMMARY_FILE
from imagegen_pipeline.defs.metadata import markdown_table, png_markdown
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker
from imagegen_pipeline.ml import extractor as core
from imagegen_pipeline.ml.embeddings_store import write_embeddings
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.tracking.registry import Guard, log_code_model, promote_if_better, registered_name

GROUP = "features"
SERVING_CODE = Path(__file__).resolve().parent.parent / "serving" / "extractor_model.py"


class FeatureExtractorConfig(dg.Config):
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda'.")
    input_size: int = Field(default=64, description="Images are resized to this side for MobileNetV2 (96+ on a GPU).")
    batch_size: int = Field(default=64, description="Training images per step.")
    head_epochs: int = Field(default=0, description="Phase 1: epochs of a new head on the frozen backbone (0 = skip).")
    finetune_epochs: int = Field(default=1, description="Phase 2: epochs with the top blocks unfrozen (one-cycle LR).")
    unfreeze_blocks: int = Field(default=19, description="Backbone blocks (from the top) unfrozen in phase 2; "
                                                         "19 = all of MobileNetV2.")
    max_train_images: int | None = Field(default=24000, description="Cap on labelled training images; null = all "
                                                                   "(the default keeps a CPU run near a minute).")
    max_val_images: int | None = Field(default=2000, description="Cap on validation images; null = all.")
    train_baseline: bool = Field(default=False, description="Also train from scratch with the same budget, to "
                                                            "measure what transfer bought (doubles the time).")
    seed: int = Field(default=0, description="Seed for init, shuffling and augmentation.")
    allow_download: bool = Field(default=False, description="Let torchvision download ImageNet weights if no "
                                                            "local copy is found (needs internet).")
    min_val_accuracy: float = Field(default=0.5, description="Asset check floor for validation accuracy.")

    def to_core(self) -> core.ExtractorConfig:
        return core.ExtractorConfig(
            input_size=self.input_size, batch_size=self.batch_size, head_epochs=self.head_epochs,
            finetune_epochs=self.finetune_epochs, unfreeze_blocks=self.unfreeze_blocks,
            max_train_images=self.max_train_images, max_val_images=self.max_val_images,
            train_baseline=self.train_baseline, seed=self.seed)


@dg.asset(partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN,
          group_name=GROUP, kinds={"pytorch", "mlflow"}, deps=[IMAGE_SHARDS],
          pool="gpu",
          description="MobileNetV2 with ImageNet weights, fine-tuned on the dataset's labels (an optional "
                      "frozen-backbone head, then the whole net, one-cycle); an optional from-scratch baseline "
                      "shows what transfer bought. Registered in MLflow as imagegen-extractor-<dataset>.")
def feature_extractor(context: dg.AssetExecutionContext, config: FeatureExtractorConfig, storage: ImagegenStorage,
                      mlflow_tracker: MlflowTracker) -> dg.MaterializeResult:
    dataset = dataset_of(context)
    paths = storage.paths
    reader = open_shards(paths, dataset)
    cfg = config.to_core()
    runtime = resolve_runtime(config.device)
    try:
        imagenet, source = core.find_mobilenet_weights(allow_download=config.allow_download)
    except core.MissingWeightsError as exc:
        raise dg.Failure(str(exc)) from exc
    x_train, y_train = reader.load_split("train")
    x_val, y_val = reader.load_split("val")
    context.log.info(f"{dataset}: {len(x_train)} train / {len(x_val)} val images {reader.shape}, "
                     f"{len(reader.class_names)} classes, on {runtime.describe()}; ImageNet weights from {source}")
    model_file = paths.models(dataset) / EXTRACTOR_FILE
    stamp = shards_stamp(reader)
    with mlflow_tracker.start_run(paths, dataset, run_name=f"extractor-{context.run_id[:8]}",
                                  tags={"imagegen.stage": "feature_extractor", "imagegen.dagster_run": context.run_id,
                                        "imagegen.shards": stamp}) as run:
        mlflow.log_params({**cfg.to_dict(), **runtime.describe(), "weights_source": source,
                           "train_images": len(x_train), "val_images": len(x_val)})

        def on_epoch(row: dict) -> None:
            prefix = "baseline_" if row["phase"] == "scratch" else ""
            mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in row.items()
                                if isinstance(v, (int, float)) and k not in ("epoch", "step")}, step=int(row["step"]))

        t0 = time.perf_counter()
        report = core.train_extractor(x_train, y_train, x_val, y_val, cfg, runtime=runtime,
                                      class_names=reader.class_names, weights_state_dict=imagenet,
                                      weights_source=source, on_epoch=on_epoch, log=context.log.info)
        seconds = time.perf_counter() - t0
        summary = {"dataset": dataset, **report.summary(), "class_names": reader.class_names,
                   "shards": stamp, "mlflow_run_id": run.info.run_id, "seconds": round(seconds, 1),
                   "min_val_accuracy": config.min_val_accuracy, "config": cfg.to_dict(),
                   "runtime": runtime.describe()}
        core.save_extractor(model_file, report.model, summary)
        val_acc, base_acc = summary.get("val_accuracy"), summary.get("baseline_val_accuracy")
        mlflow.log_metrics({k: float(v) for k, v in summary.items()
                            if k in ("val_accuracy", "baseline_val_accuracy", "transfer_gain")} | {"train_seconds": seconds})
        confusion = None
        if report.finetune is not None:
            confusion = core.confusion_png(report.finetune.confusion, reader.class_names)
            mlflow.log_image(_png_to_array(confusion), "confusion_matrix.png")
        curves = curves_png(_curve_series(report), title=f"{dataset}: validation accuracy", xlabel="optimizer step")
        mlflow.log_image(_png_to_array(curves), "accuracy_curves.png")
        name = registered_name("extractor", dataset)
        mv = log_code_model(code_file=SERVING_CODE, artifacts={"extractor": str(model_file)}, registered_model_name=name,
                            metadata={"dataset": dataset, "shards": stamp},
                            metrics={"val_accuracy": val_acc} if _num(val_acc) is not None else {},
                            tags={"imagegen.shards": stamp, "imagegen.fine_tuned": str(report.fine_tuned)})
        decision = promote_if_better(name, mv.version, [Guard("val_accuracy", higher_is_better=True, strict=False)])
        summary.update(registered_model=name, registered_version=mv.version, champion=decision.promoted,
                       promotion=decision.reason)
        write_json_atomic(paths.models(dataset) / SUMMARY_FILE, summary)
        link = mlflow_tracker.link(run)

    metadata = {
        "fine_tuned": report.fine_tuned,
        "val_accuracy": _num(val_acc),
        "baseline_val_accuracy (from scratch, same steps)": _num(base_acc),
        "transfer_gain": _num(summary.get("transfer_gain")),
        "train_seconds": round(seconds, 1),
        "device": runtime.describe()["device_name"],
        "weights_source": source,
        "registered_model": f"{name} v{mv.version}",
        "promotion": decision.reason,
        "mlflow_run": dg.MetadataValue.url(link),
        "mlflow_model": dg.MetadataValue.url(mlflow_tracker.model_link(name, mv.version)),
        "model_file": dg.MetadataValue.path(str(model_file)),
        "accuracy_curves": png_markdown(curves, "validation accuracy per epoch"),
        "epochs": dg.MetadataValue.md(markdown_table(
            ["run", "phase", "epoch", "train_loss", "val_acc"],
            [("baseline" if r["phase"] == "scratch" else "fine-tune", r["phase"], r["epoch"], f"{r['train_loss']:.4f}",
              f"{r['val_acc']:.4f}") for r in _history(report)])),
    }
    if not report.fine_tuned:
        metadata["note"] = f"not fine-tuned: {report.reason}; embeddings are ImageNet features as they are"
    if confusion is not None:
        metadata["confusion_matrix"] = png_markdown(confusion, "confusion matrix (validation)")
    return dg.MaterializeResult(metadata=metadata)


class ImageEmbeddingsConfig(dg.Config):
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'.")
    batch_size: int = Field(default=256, description="Images per forward pass.")
    near_duplicate_cosine: float = Field(default=0.995, description="Pairs of different files whose embeddings "
                                                                    "have at least this cosine are reported.")


@dg.asset(partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN,
          group_name=GROUP, kinds={"pytorch", "parquet"},
          deps=[FEATURE_EXTRACTOR, IMAGE_SHARDS],
          description="The fine-tuned extractor's 1280-d embedding of every accepted image, as Parquet under "
                      "data/embeddings/<dataset>/ (sha256, split, label, vector), with a 2-D map and near-duplicates.")
def image_embeddings(context: dg.AssetExecutionContext, config: ImageEmbeddingsConfig,
                     storage: ImagegenStorage) -> dg.MaterializeResult:
    dataset = dataset_of(context)
    paths = storage.paths
    reader = open_shards(paths, dataset)
    model_file = paths.models(dataset) / EXTRACTOR_FILE
    if not model_file.is_file():
        raise dg.Failure(f"{dataset}: no {model_file}; materialize feature_extractor first")
    model, meta = core.load_extractor(model_file)
    summary_file = paths.models(dataset) / SUMMARY_FILE
    if summary_file.is_file():  # the registered version is known only after the weights were saved
        meta = {**meta, **json.loads(summary_file.read_text())}
    runtime = resolve_runtime(config.device)
    t0 = time.perf_counter()
    parts, n = [], 0
    for split in reader.description["splits"]:
        if not reader.num_rows(split):
            continue
        images, labels = reader.load_split(split)
        emb, _ = core.embed_images(model, images, runtime=runtime, batch_size=config.batch_size)
        parts.append({"split": split, "sha256": reader.read_column(split, "sha256"),
                      "label": reader.read_column(split, "label"), "label_idx": labels.numpy(), "embedding": emb})
        n += len(images)
        context.log.info(f"{dataset}/{split}: {len(images)} embeddings")
    seconds = time.perf_counter() - t0
    out = write_embeddings(paths.embeddings(dataset), parts, extractor=meta)
    vectors = np.concatenate([p["embedding"] for p in parts])  # the rows just written, in file order
    xy = core.pca_2d(vectors)
    map_png = core.embedding_map_png(xy, np.concatenate([p["label_idx"] for p in parts]), reader.class_names)
    dups = core.near_duplicates(vectors, [h for p in parts for h in p["sha256"]],
                                threshold=config.near_duplicate_cosine)
    rows = [(a[:12], b[:12], f"{c:.4f}") for a, b, c in dups[:25]]
    return dg.MaterializeResult(metadata={
        "dagster/row_count": n,
        "dim": int(vectors.shape[1]),
        "images_per_second": round(n / seconds, 1) if seconds else 0.0,
        "device": runtime.describe()["device_name"],
        "extractor": f"{meta.get('registered_model', 'extractor')} v{meta.get('registered_version', '?')}",
        "near_duplicate_pairs": len(dups),
        "near_duplicates": dg.MetadataValue.md(markdown_table(["sha256 a", "sha256 b", "cosine"], rows)
                                               if rows else "none above the threshold"),
        "embedding_map": png_markdown(map_png, "PCA of the embeddings, coloured by class"),
        "path": dg.MetadataValue.path(str(out)),
    })


def _num(v: float | None) -> float | None:
    """A finite figure rounded for people, else None: NaN (no labelled val rows) is "not measured", never a score."""
    return None if v is None or not math.isfinite(float(v)) else round(float(v), 4)


def _png_to_array(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _history(report: core.ExtractorReport) -> list[dict]:
    return [r for res in (report.finetune, report.baseline) if res is not None for r in res.history]


def _curve_series(report: core.ExtractorReport) -> dict[str, list[tuple[float, float]]]:
    """Validation accuracy against optimizer steps: fine-tuning and the from-scratch baseline on one plot."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in _history(report):
        series.setdefault("from scratch" if r["phase"] == "scratch" else "fine-tuned", []).append(
            (r["step"], r["val_acc"]))
    return series
