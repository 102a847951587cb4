"""Asset `dcgan_checkpoint`: the conditional DCGAN trained inside the op (GPU when present), resumable, tracked in
MLflow, its EMA generator registered as imagegen-generator-<dataset> (alias `candidate`; evaluation moves
`champion`)."""


import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import torch
from PIL import Image
from mlflow.models import infer_signature
from pydantic import Field

from imagegen_pipeline.atomic import atomic_path, write_json_atomic
from imagegen_pipeline.defs.artifacts import (CAPTION_EMBEDDINGS, ENCODER_NAME, EXTRACTOR_FILE, EXTRACTOR_SUMMARY,
                                              EXTRACTOR_VERSION_TAG, FEATURE_EXTRACTOR, GENERATOR_FILE,
                                              GENERATOR_SUMMARY, IMAGE_SHARDS)
from imagegen_pipeline.defs.common import curves_png, dataset_of, open_shards, shards_stamp
from imagegen_pipeline.defs.metadata import png_markdown
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker
from imagegen_pipeline.ml import dcgan as core
from imagegen_pipeline.ml.checkpoint import CorruptCheckpoint, load_checkpoint
from imagegen_pipeline.ml.dcgan.train import CHECKPOINT_FILE
from imagegen_pipeline.ml.grids import png_bytes
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.paths import validate_dataset_name
from imagegen_pipeline.tracking.registry import (MissingArtifact, current_alias_holder, log_code_model,
                                                registered_name)
from imagegen_pipeline.tracking.store import use_store

GROUP = "generation"
SERVING_CODE = Path(__file__).resolve().parent.parent / "serving" / "generator_model.py"
CANDIDATE = "candidate"
DONE_FILE = "registered.json"  # written after registration: a later materialization starts a fresh run


class DcganTrainConfig(dg.Config):
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda'.")
    conditioning: str = Field(default="auto", description="'none', 'class', 'text' or 'auto' (class when the "
                                                          "dataset has at least 2 classes, else none).")
    steps: int = Field(default=6000, description="Optimizer steps (the cpu-demo default: about 3.5 min on 2 cores; "
                                               "see `imagegen presets` for GPU sizes).")
    batch_size: int = Field(default=64, description="Images per step.")
    ngf: int = Field(default=32, description="Generator width (64 is the paper's).")
    ndf: int = Field(default=32, description="Discriminator width (64 is the paper's).")
    lr_g: float = Field(default=1.2e-3, description="Generator Adam learning rate (at batch 64 on MNIST, 6,000 "
                                                    "steps: FID 23.7 at 1.2e-3, 26.2 at 8e-4, 27.6 at 4e-4; README).")
    lr_d: float = Field(default=1.2e-3, description="Discriminator Adam learning rate.")
    loss: str = Field(default="hinge", description="'hinge' or 'bce'.")
    diffaugment: str = Field(default="", description="DiffAugment policy, e.g. 'color,translation,cutout', for "
                                                     "small datasets (<10k images); on 60k MNIST images it made G "
                                                     "collapse, so it is off by default.")
    ema_beta: float = Field(default=0.995, description="Generator weight averaging (the EMA model is served).")
    ema_start_step: int = Field(default=100, description="EMA copies G until this step.")
    feature_head: bool = Field(default=False, description="Extra D head on the frozen fine-tuned extractor's "
                                                          "features (needs feature_extractor).")
    init_from: str = Field(default="", description="Start from another dataset's trained DCGAN (its latest "
                                                   "registered version's checkpoint), e.g. 'mnist'.")
    freeze_d_blocks: int = Field(default=0, description="With init_from: keep the first k D blocks fixed.")
    sample_every: int = Field(default=250, description="Steps between fixed-noise sample grids (logged to MLflow "
                                                       "with the z_sensitivity collapse monitor).")
    checkpoint_every: int = Field(default=500, description="Steps between checkpoints.")
    log_every: int = Field(default=50, description="Steps between metrics.")
    compile: bool = Field(default=False, description="torch.compile G and D (CUDA only).")
    cpu_bf16: bool = Field(default=True, description="On a CPU with native bf16 (AVX512-BF16 or AMX), train in bf16 "
                                                     "autocast like on CUDA (1.3-1.8x the steps per second on 2 "
                                                     "cores); false = fp32. Ignored elsewhere.")
    seed: int = Field(default=0, description="Seed for weights, batches and the fixed sample noise.")


def _core_config(config: DcganTrainConfig, reader, dataset: str, conditioning: str) -> core.DCGANConfig:
    c, h, _ = reader.shape
    return core.DCGANConfig(
        resolution=h, channels=c, ngf=config.ngf, ndf=config.ndf, conditioning=conditioning,
        num_classes=len(reader.class_names) if conditioning == "class" else 0, loss=config.loss,
        diffaugment=config.diffaugment, ema_beta=config.ema_beta, ema_start_step=config.ema_start_step,
        feature_head=config.feature_head, freeze_d_blocks=config.freeze_d_blocks, batch_size=config.batch_size,
        steps=config.steps, lr_g=config.lr_g, lr_d=config.lr_d, sample_every=config.sample_every,
        checkpoint_every=config.checkpoint_every, log_every=config.log_every, compile=config.compile,
        seed=config.seed, extra={"dataset": dataset, "class_names": list(reader.class_names)})


def _run_dir(paths, dataset: str, cfg: core.DCGANConfig, stamp: str) -> Path:
    """Same config + same data = same folder, so a killed run resumes; anything else starts fresh."""
    key = hashlib.sha256(json.dumps([cfg.to_dict(), stamp], sort_keys=True, default=str).encode()).hexdigest()[:12]
    return paths.checkpoints(dataset) / f"dcgan-{key}"


def _init_from(source: str) -> tuple[dict | None, str]:
    """The checkpoint logged with the source dataset's registered generator (its champion, else its newest
    version) and which version that is; not whichever local checkpoint folder was touched last."""
    if not source:
        return None, ""
    name = registered_name("generator", validate_dataset_name(source))
    client = mlflow.MlflowClient()
    try:
        mv = current_alias_holder(name, client=client) or max(
            client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version), default=None)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # a locked store is an error, not "nothing registered"
            raise
        mv = None
    if mv is None:
        raise dg.Failure(f"init_from={source!r}: no registered generator {name}; materialize dcgan_checkpoint "
                         f"for {source!r} first")
    with tempfile.TemporaryDirectory(prefix="imagegen-init-from-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=f"checkpoint/{CHECKPOINT_FILE}", dst_path=tmp)
        except (mlflow.exceptions.MlflowException, OSError) as exc:
            raise MissingArtifact(
                f"init_from={source!r}: {name} v{mv.version} was registered from MLflow run {mv.run_id}, whose "
                f"checkpoint/{CHECKPOINT_FILE} cannot be read from the artifact store ({type(exc).__name__}: "
                f"{str(exc)[:200]}). Restore the store's artifacts folder, or train {source!r} again") from None
        return load_checkpoint(local), f"{name} v{mv.version}"


@dg.asset(partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN,
          group_name=GROUP, kinds={"pytorch", "mlflow"}, pool="gpu",
          deps=[IMAGE_SHARDS, FEATURE_EXTRACTOR, CAPTION_EMBEDDINGS],
          description="Conditional DCGAN (G + D, EMA generator) trained on the shards; checkpoints every N steps "
                      "and resumes after a kill. The EMA generator is registered as imagegen-generator-<dataset>.")
def dcgan_checkpoint(context: dg.AssetExecutionContext, config: DcganTrainConfig, storage: ImagegenStorage,
                     mlflow_tracker: MlflowTracker) -> dg.MaterializeResult:
    dataset = dataset_of(context)
    paths = storage.paths
    reader = open_shards(paths, dataset)
    conditioning = config.conditioning
    if conditioning == "auto":
        conditioning = "class" if len(reader.class_names) >= 2 else "none"
    captions = _train_captions(paths, dataset, reader) if conditioning == "text" else None
    try:
        cfg = _core_config(config, reader, dataset, conditioning)
        if captions is not None:  # the vectors fix text_dim; the caption file's stamp makes it a different run
            cfg = cfg.replace(text_dim=captions.vectors.shape[1],
                              extra={**cfg.extra, "text_encoder": ENCODER_NAME, "captions": captions.stamp,
                                     "example_prompts": captions.examples})
    except ValueError as exc:
        raise dg.Failure(f"{dataset}: {exc}") from exc
    use_store(mlflow_tracker.uri(paths))
    init_state, init_version = _init_from(config.init_from)
    if init_version:  # part of the run key: another source version is another experiment
        cfg = cfg.replace(extra={**cfg.extra, "init_from": init_version})
    runtime = resolve_runtime(config.device, cpu_bf16=config.cpu_bf16)
    images, labels = reader.load_split("train")
    if conditioning == "class" and bool((labels < 0).any()):
        keep = labels >= 0
        context.log.warning(f"{int((~keep).sum())} unlabelled images left out of class-conditional training")
        images, labels = images[keep], labels[keep]
    text = None
    if captions is not None:
        keep = torch.from_numpy(captions.found)
        if not bool(keep.all()):
            context.log.warning(f"{int((~keep).sum())} images without a caption left out of text-conditional training")
            images, labels = images[keep], labels[keep]
        text = torch.from_numpy(captions.vectors[captions.found])
    feature_net = None
    if cfg.feature_head:
        from imagegen_pipeline.ml.extractor import load_extractor

        if not (paths.models(dataset) / EXTRACTOR_FILE).is_file():
            raise dg.Failure("feature_head=True needs the fine-tuned extractor: materialize feature_extractor")
        feature_net, _ = load_extractor(paths.models(dataset) / EXTRACTOR_FILE)
    stamp = shards_stamp(reader)
    out_dir = _run_dir(paths, dataset, cfg, stamp)
    if (out_dir / DONE_FILE).exists():  # finished and registered before: this materialization is a new run
        shutil.rmtree(out_dir)
    resuming = (out_dir / CHECKPOINT_FILE).exists()
    mlflow_run_file = out_dir / "mlflow_run_id"
    extractor_version = _extractor_version(paths, dataset)
    context.log.info(f"{dataset}: {len(images)} images {reader.shape}, conditioning={conditioning}, "
                     f"{'resuming' if resuming else 'starting'} in {out_dir} on {runtime.describe()}")
    history: list[dict] = []
    with mlflow_tracker.start_run(
            paths, dataset, run_name=f"dcgan-{context.run_id[:8]}",
            run_id=mlflow_run_file.read_text().strip() if resuming and mlflow_run_file.exists() else None,
            tags={"imagegen.stage": "dcgan_checkpoint", "imagegen.dagster_run": context.run_id,
                  "imagegen.shards": stamp, EXTRACTOR_VERSION_TAG: str(extractor_version)}) as run:
        out_dir.mkdir(parents=True, exist_ok=True)
        mlflow_run_file.write_text(run.info.run_id)
        if not resuming:
            mlflow.log_params({**{k: v for k, v in cfg.to_dict().items() if k != "extra"}, **runtime.describe(),
                               "train_images": len(images), "init_from": init_version or "none"})

        def on_step(step: int, metrics: dict) -> None:
            history.append({"step": step, **metrics})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
            if step % (cfg.log_every * 8) == 0 or step == cfg.steps:
                context.log.info(f"step {step}/{cfg.steps}: " + ", ".join(f"{k}={v:.3g}" for k, v in metrics.items()))

        def on_sample(step: int, grid) -> None:
            mlflow.log_image(grid, key="samples", step=step)

        t0 = time.perf_counter()
        try:
            result = core.train_dcgan(cfg, core.TrainData(images=images, labels=labels, text=text), out_dir=out_dir,
                                      runtime=runtime, feature_net=feature_net,
                                      init_from=init_state, on_step=on_step,
                                      on_sample=on_sample, log=context.log.info)
        except core.TrainingDiverged as exc:
            raise dg.Failure(f"{dataset}: {exc} (the last good checkpoint is kept in {out_dir})") from exc
        except CorruptCheckpoint as exc:
            raise dg.Failure(f"{dataset}: {exc}") from exc
        seconds = time.perf_counter() - t0
        generator_file = paths.models(dataset) / GENERATOR_FILE
        with atomic_path(generator_file) as tmp:
            shutil.copyfile(result.generator_path, tmp)
        mlflow.log_artifact(str(result.checkpoint_path), artifact_path="checkpoint")
        mlflow.log_metrics({"train_seconds": seconds, "images_per_second_total": result.images_per_second})
        grid_png = png_bytes(Image.fromarray(result.grid))
        name = registered_name("generator", dataset)
        example = pd.DataFrame({"label": [reader.class_names[0] if conditioning == "class" else None],
                                "prompt": [captions.examples[0] if captions is not None else None],
                                "seed": [0], "count": [1]})
        signature = infer_signature(example, params={"format": "png"})
        mv = log_code_model(code_file=SERVING_CODE, artifacts={"generator": str(generator_file)},
                            registered_model_name=name, signature=signature,
                            metadata={"dataset": dataset, "shards": stamp, "conditioning": conditioning},
                            tags={"imagegen.shards": stamp, EXTRACTOR_VERSION_TAG: str(extractor_version),
                                  "imagegen.conditioning": conditioning, "imagegen.mlflow_run": run.info.run_id,
                                  "imagegen.checkpoint": str(result.checkpoint_path)})
        mlflow.MlflowClient().set_registered_model_alias(name, CANDIDATE, mv.version)
        link = mlflow_tracker.link(run)
    write_json_atomic(out_dir / DONE_FILE, {"registered_model": name, "version": mv.version})
    write_json_atomic(paths.models(dataset) / GENERATOR_SUMMARY, {
        "registered_model": name, "version": mv.version, "mlflow_run_id": run.info.run_id, "steps": result.final_step,
        "checkpoint": str(result.checkpoint_path), "generator_file": str(generator_file), "conditioning": conditioning,
        "images_per_second": result.images_per_second, "seconds": round(seconds, 1), "shards": stamp,
        "extractor_version": extractor_version, "config": cfg.to_dict(), "runtime": runtime.describe()})
    z_sens = [r["z_sensitivity"] for r in result.metrics if "z_sensitivity" in r]  # last = the exported G's
    curves = curves_png({k: [(r["step"], r[k]) for r in result.metrics if k in r]
                         for k in ("loss_d", "loss_g", "d_real", "d_fake", "z_sensitivity")},
                        title=f"{dataset}: DCGAN losses", xlabel="step")
    return dg.MaterializeResult(metadata={
        "steps": result.final_step,
        "resumed_from_step": result.resumed_from,
        "images_per_second": round(result.images_per_second, 1),
        "train_seconds": round(seconds, 1),
        "device": runtime.describe()["device_name"],
        "precision": runtime.describe()["amp_dtype"],
        "conditioning": conditioning,
        "z_sensitivity (EMA G, share of real)": round(z_sens[-1], 3),
        "registered_model": f"{name} v{mv.version} (@{CANDIDATE})",
        "mlflow_run": dg.MetadataValue.url(link),
        "mlflow_model": dg.MetadataValue.url(mlflow_tracker.model_link(name, mv.version)),
        "checkpoint": dg.MetadataValue.path(str(result.checkpoint_path)),
        "samples": png_markdown(grid_png, "fixed-noise samples of the EMA generator"),
        "loss_curves": png_markdown(curves, "losses"),
    })


@dataclass
class _TrainCaptions:
    vectors: np.ndarray  # float32 (N_train, D) in the train split's row order; zero rows where found is False
    found: np.ndarray  # bool (N_train,): the image has a caption vector
    stamp: str  # content hash of captions.parquet: other caption vectors = another experiment
    examples: list[str]  # a few training captions, e.g. as prompts to try


def _train_captions(paths, dataset: str, reader) -> _TrainCaptions:
    """caption_embeddings' vectors aligned to the train split's row order by sha256."""
    from imagegen_pipeline.ml.prompt_score import CAPTIONS_FILE, read_captions, vectors_for

    f = paths.embeddings(dataset) / CAPTIONS_FILE
    if not f.is_file():
        raise dg.Failure(f"{dataset}: text conditioning needs caption vectors; no {f}: materialize "
                         "caption_embeddings first")
    frame = read_captions(paths.embeddings(dataset), split="train")
    vectors, found = vectors_for(reader.read_column("train", "sha256"), frame)
    if not found.any():
        raise dg.Failure(f"{dataset}: {f} has no caption for any training image (stale? the shards changed "
                         "since): rematerialize caption_embeddings")
    examples = sorted(set(frame["caption"].tolist()))
    step = max(1, len(examples) // 8)
    return _TrainCaptions(vectors, found, hashlib.sha256(f.read_bytes()).hexdigest()[:16], examples[::step][:8])


def _extractor_version(paths, dataset: str) -> str | None:
    f = paths.models(dataset) / EXTRACTOR_SUMMARY
    return str(json.loads(f.read_text()).get("registered_version")) if f.is_file() else None
