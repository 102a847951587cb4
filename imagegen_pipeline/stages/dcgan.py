"""Stage `dcgan_checkpoint`: train the dataset's generator on its shards (GPU when present), resumable after a
kill, tracked in MLflow, registered as imagegen-generator-<dataset> with alias `candidate` (evaluation moves
`champion`). Three families share it: the conditional DCGAN (its EMA generator), a VAE whose decoder is the same
generator network, and EDM diffusion (ml/diffusion, its EMA denoiser behind the same seed -> image interface); the
`imagegen.family` tag says which, and all compete for `champion` under one gate."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from imagegen_pipeline.atomic import atomic_path, write_json_atomic
from imagegen_pipeline.locks import LockTimeout, exclusive_lock
from imagegen_pipeline.ml import dcgan as core
from imagegen_pipeline.ml.checkpoint import CorruptCheckpoint, load_checkpoint
from imagegen_pipeline.ml.dcgan import ddp
from imagegen_pipeline.ml.dcgan.config import RESUMABLE_CHANGES
from imagegen_pipeline.ml.dcgan.train import CHECKPOINT_FILE
from imagegen_pipeline.ml.dcgan.vae import train_vae
from imagegen_pipeline.ml.diffusion import DiffusionConfig, train_diffusion
from imagegen_pipeline.ml.diffusion.config import RESUMABLE_CHANGES as DIFFUSION_RESUMABLE
from imagegen_pipeline.ml.grids import png_bytes
from imagegen_pipeline.paths import DataPaths, validate_dataset_name
from imagegen_pipeline.stages.artifacts import (ENCODER_NAME, EXTRACTOR_FILE, EXTRACTOR_SUMMARY, EXTRACTOR_VERSION_TAG,
                                                FAMILY_TAG, GENERATOR_FILE, GENERATOR_SUMMARY)
from imagegen_pipeline.stages.common import curves_png, open_shards, shards_stamp
from imagegen_pipeline.stages.outputs import FilePath, Link, Png, StageFailed
from imagegen_pipeline.tracking.registry import MissingArtifact, registered_name
from imagegen_pipeline.tracking.tracker import Tracker

SERVING_CODE = Path(__file__).resolve().parent.parent / "serving" / "generator_model.py"
CANDIDATE = "candidate"
DONE_FILE = "registered.json"  # written after registration: a later materialization starts a fresh run
RUN_ID_FILE = "mlflow_run_id"  # in the run folder: a resumed training reopens its MLflow run


@dataclass
class GeneratorJob:
    """One training request: DCGANConfig fields the caller sets (the rest keep the core defaults) and how to run."""

    model: dict = field(default_factory=dict)
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    conditioning: str = "auto"  # "none" | "class" | "text" | "auto": class when the data has 2+ labels
    init_from: str = ""  # start from this dataset's registered generator (its champion, else its newest)
    cpu_bf16: bool = True  # bf16 autocast on a CPU with native bf16; ignored elsewhere
    cpu_threads: int = 0  # torch threads while training on CPU; 0 = torch's default (one per core)
    diffusion: dict = field(default_factory=dict)  # family "diffusion": DiffusionConfig fields (model_channels, ...)


def train_generator(paths: DataPaths, dataset: str, job: GeneratorJob, *, tracker: Tracker, run_tag: str,
                    log: Callable[[str], None], warn: Callable[[str], None]) -> dict:
    """Train (or resume) and register one generator; the metadata of what was made."""
    reader = open_shards(paths, dataset)
    conditioning = job.conditioning
    if conditioning == "auto":
        conditioning = "class" if len(reader.class_names) >= 2 else "none"
    diffusion = job.model.get("family") == "diffusion"
    with_variants = diffusion and float(job.diffusion.get("alt_caption_p", 0)) > 0
    tokens = int(job.diffusion.get("text_tokens", 0)) if diffusion else 0
    captions = _train_captions(paths, dataset, reader, variants=with_variants, tokens=tokens) \
        if conditioning == "text" else None
    cfg = _model_config(job, reader, dataset, conditioning, captions)
    if cfg.family != "dcgan" and job.init_from:
        raise StageFailed(f"{dataset}: init_from starts a DCGAN from another DCGAN; the {cfg.family} family trains "
                          "from scratch")
    init_state, init_version = _init_from(tracker, job.init_from)
    if init_version:  # part of the run key: another source version is another experiment
        cfg = cfg.replace(extra={**cfg.extra, "init_from": init_version})
    data = _train_data(reader, conditioning, captions, warn)
    feature_net = None
    if cfg.feature_head:  # D's head learns this network's embeddings: another network is another experiment
        feature_net, feature_key = _feature_net(paths, dataset)
        cfg = cfg.replace(extra={**cfg.extra, "feature_net": feature_key})
    # in the run worker a world of one; under torchrun (imagegen_pipeline.external) this joins its process group
    rank, runtime = ddp.init_distributed(job.device, cpu_bf16=job.cpu_bf16)
    if rank.enabled and cfg.family != "dcgan":
        raise StageFailed(f"{dataset}: the {cfg.family} family trains in one process; launch it with "
                          "nproc_per_node=1")
    stamp = shards_stamp(reader)
    out_dir = run_dir(paths, dataset, cfg, stamp)
    if not rank.is_main:  # another torchrun rank: trains in step with rank 0, which alone writes, tracks, registers
        ddp.barrier(rank)
        _train(cfg, data, out_dir, runtime, feature_net, init_state, None, log, dataset)
        return {}
    with run_folder_lock(out_dir, dataset, run_tag):
        if (out_dir / DONE_FILE).exists():  # finished and registered before: a new run
            shutil.rmtree(out_dir)
        ddp.barrier(rank)
        return _train_and_register(paths, dataset, reader, cfg, data, out_dir, stamp, runtime, rank, feature_net,
                                   init_state, init_version, conditioning, captions, tracker=tracker,
                                   run_tag=run_tag, log=log, warn=warn, job_threads=job.cpu_threads)


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to n (> 0) for the block, then put back. On a 2-core box shared with other
    jobs, 2 OpenMP threads per process oversubscribe it: a diffusion step ran 6-12x slower than with 1."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def run_folder_lock(out_dir: Path, dataset: str, run_tag: str) -> Iterator[None]:
    """One trainer per run folder: the CLI trains in its own process, outside any run queue, and two runs of one
    experiment share a folder; the second refuses, naming the first. The lock file lives beside the folder (a
    finished run's successor deletes the folder), under .locks/."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(exclusive_lock(out_dir.parent / ".locks" / f"{out_dir.name}.lock", timeout=0,
                                           what=f"{dataset}: the run folder {out_dir}",
                                           holder=f"Dagster run {run_tag}"))
    except LockTimeout as exc:
        raise StageFailed(str(exc)) from None
    with stack:
        yield


def _train_and_register(paths: DataPaths, dataset: str, reader, cfg, data, out_dir: Path, stamp: str, runtime, rank,
                        feature_net, init_state, init_version: str, conditioning: str, captions, *, tracker: Tracker,
                        run_tag: str, log: Callable[[str], None], warn: Callable[[str], None],
                        job_threads: int = 0) -> dict:
    """Rank 0's part, under the run folder's lock: train or resume, track, register, write the summary."""
    resuming = (out_dir / CHECKPOINT_FILE).exists()
    extractor_version = _extractor_version(paths, dataset)
    log(f"{dataset}: {len(data.images)} images {reader.shape}, conditioning={conditioning}, "
        f"{'resuming' if resuming else 'starting'} in {out_dir} on {runtime.describe()}")
    run_id_file = out_dir / RUN_ID_FILE
    with tracker.run(dataset, run_name=f"{cfg.family}-{run_tag[:8]}", system_metrics=True,
                     resume_id=run_id_file.read_text().strip() if resuming and run_id_file.exists() else None,
                     tags={"imagegen.stage": "dcgan_checkpoint", "imagegen.dagster_run": run_tag,
                           "imagegen.shards": stamp, EXTRACTOR_VERSION_TAG: str(extractor_version)}) as run:
        out_dir.mkdir(parents=True, exist_ok=True)
        run_id_file.write_text(run.id)
        if not resuming:
            run.log_params({**{k: v for k, v in cfg.to_dict().items() if k != "extra"}, **runtime.describe(),
                            "train_images": len(data.images), "init_from": init_version or "none",
                            "processes": rank.world_size})
            run.log_shards(reader.dir, stamp, dataset)
        t0 = time.perf_counter()
        with cpu_threads(job_threads if not runtime.is_cuda else 0):
            result = _train(cfg, data, out_dir, runtime, feature_net, init_state, run, log, dataset)
        seconds = time.perf_counter() - t0
        run.log_artifact(result.checkpoint_path, "checkpoint")
        run.log_metrics({"train_seconds": seconds, "images_per_second_total": result.images_per_second})
        # from the run folder's own export: the shared models/<ds> copy is every run's, another may rewrite it
        mv = _register(tracker, run, dataset, reader, conditioning, captions, result.generator_path, stamp,
                       extractor_version, result, cfg.family, getattr(cfg, "guidance", None))
    generator_file = paths.models(dataset) / GENERATOR_FILE  # the dataset's latest, for the stages that follow
    with atomic_path(generator_file) as tmp:
        shutil.copyfile(result.generator_path, tmp)
    name = mv.name
    write_json_atomic(out_dir / DONE_FILE, {"registered_model": name, "version": mv.version})
    write_json_atomic(paths.models(dataset) / GENERATOR_SUMMARY, {
        "registered_model": name, "version": mv.version, "mlflow_run_id": run.id, "steps": result.final_step,
        "checkpoint": str(result.checkpoint_path), "generator_file": str(generator_file), "conditioning": conditioning,
        "family": cfg.family,
        "images_per_second": result.images_per_second, "seconds": round(seconds, 1), "shards": stamp,
        "extractor_version": extractor_version, "config": cfg.to_dict(), "runtime": runtime.describe()})
    if not result.ranks_agree:
        warn(f"{dataset}: the {rank.world_size} training processes ended with different weights; rank 0's are kept")
    z_sens = [r["z_sensitivity"] for r in result.metrics if "z_sensitivity" in r]  # last = the exported G's
    curves = curves_png({k: [(r["step"], r[k]) for r in result.metrics if k in r]
                         for k in ("loss_d", "loss_g", "d_real", "d_fake", "recon", "kl", "loss", "z_sensitivity")},
                        title=f"{dataset}: {cfg.family.upper()} losses", xlabel="step")
    return {
        "steps": result.final_step,
        "resumed_from_step": result.resumed_from,
        "images_per_second": round(result.images_per_second, 1),
        "train_seconds": round(seconds, 1),
        "device": runtime.describe()["device_name"],
        "processes": rank.world_size,  # > 1 under torchrun
        "ranks_agree": result.ranks_agree,  # every process ended with the same G and D (a checksum, all-reduced)
        "precision": runtime.describe()["amp_dtype"],
        "conditioning": conditioning,
        "family": cfg.family,
        **({"z_sensitivity (exported G, share of real)": round(z_sens[-1], 3)} if z_sens else {}),
        "registered_model": f"{name} v{mv.version} (@{CANDIDATE})",
        "mlflow_run": Link(run.link),
        "mlflow_model": Link(tracker.model_link(name, mv.version)),
        "checkpoint": FilePath(str(result.checkpoint_path)),
        "samples": Png(png_bytes(Image.fromarray(result.grid)), "fixed-noise samples of the EMA generator"),
        "loss_curves": Png(curves, "losses"),
    }


# the generator fields a diffusion run takes from the job's model (the rest are the GAN's); lr_g is its one rate
_SHARED_WITH_DIFFUSION = {"batch_size": "batch_size", "steps": "steps", "seed": "seed", "lr_g": "lr",
                          "sample_every": "sample_every", "checkpoint_every": "checkpoint_every",
                          "log_every": "log_every", "compile": "compile", "num_samples": "num_samples"}


def model_config(job: GeneratorJob, *, resolution: int, channels: int, conditioning: str, num_classes: int,
                 extra: dict) -> core.DCGANConfig | DiffusionConfig:
    """The core config of a job: its model fields over the core defaults, shapes from the data. Family
    "diffusion": the shared fields of the job's model, then its `diffusion` fields, over DiffusionConfig's."""
    shapes = {"resolution": resolution, "channels": channels, "conditioning": conditioning,
              "num_classes": num_classes, "extra": extra}
    try:
        if job.model.get("family") == "diffusion":
            shared = {new: job.model[old] for old, new in _SHARED_WITH_DIFFUSION.items() if old in job.model}
            return DiffusionConfig(**{**shared, **job.diffusion, **shapes})
        if job.diffusion:
            raise ValueError(f"diffusion fields {sorted(job.diffusion)} were given for family "
                             f"{job.model.get('family', 'dcgan')!r}; they apply to family 'diffusion' only")
        return core.DCGANConfig(**{**job.model, **shapes})
    except (TypeError, ValueError) as exc:
        raise StageFailed(str(exc)) from exc


def _model_config(job: GeneratorJob, reader, dataset: str, conditioning: str, captions) -> core.DCGANConfig:
    c, h, _ = reader.shape
    cfg = model_config(job, resolution=h, channels=c, conditioning=conditioning,
                       num_classes=len(reader.class_names) if conditioning == "class" else 0,
                       extra={"dataset": dataset, "class_names": list(reader.class_names)})
    if captions is None:
        return cfg
    # the vectors fix text_dim; the caption file's stamp makes it a different run
    return cfg.replace(text_dim=captions.vectors.shape[-1],
                       extra={**cfg.extra, "text_encoder": ENCODER_NAME, "captions": captions.stamp,
                              "example_prompts": captions.examples})


def _train_data(reader, conditioning: str, captions, warn) -> core.TrainData:
    """The train split, without the rows this conditioning cannot use (unlabelled, uncaptioned): each said."""
    images, labels = reader.load_split("train")
    if conditioning == "class" and bool((labels < 0).any()):
        keep = labels >= 0
        warn(f"{int((~keep).sum())} unlabelled images left out of class-conditional training")
        images, labels = images[keep], labels[keep]
    text = None
    if captions is not None:
        keep = torch.from_numpy(captions.found)
        if not bool(keep.all()):
            warn(f"{int((~keep).sum())} images without a caption left out of text-conditional training")
            images, labels = images[keep], labels[keep]
        text = torch.from_numpy(captions.vectors[captions.found])
    variants = variant_of = None
    if captions is not None and captions.variant_vectors is not None:
        row = np.cumsum(captions.found) - 1  # train-split row -> row among the captioned images kept
        keep = captions.found[captions.variant_rows]
        variants = torch.from_numpy(captions.variant_vectors[keep])
        variant_of = torch.from_numpy(row[captions.variant_rows[keep]].astype(np.int64))
    return core.TrainData(images=images, labels=labels, text=text, text_variants=variants, variant_of=variant_of)


def _feature_net(paths: DataPaths, dataset: str) -> tuple[object, str]:
    """The frozen fine-tuned extractor and the content hash of its weights file (part of the run key)."""
    from imagegen_pipeline.ml.extractor import load_extractor

    f = paths.models(dataset) / EXTRACTOR_FILE
    if not f.is_file():
        raise StageFailed("feature_head=True needs the fine-tuned extractor: materialize feature_extractor")
    key = f"{EXTRACTOR_FILE} sha256:{hashlib.sha256(f.read_bytes()).hexdigest()[:16]}"
    return load_extractor(f)[0], key


def _train(cfg, data, out_dir: Path, runtime, feature_net, init_state, run, log, dataset: str):
    """The core training loop, its metrics and sample grids streamed into the MLflow run (None: not tracked)."""

    def on_step(step: int, metrics: dict) -> None:
        if run is not None:
            run.log_metrics(metrics, step=step)
        if step % (cfg.log_every * 8) == 0 or step == cfg.steps:
            log(f"step {step}/{cfg.steps}: " + ", ".join(f"{k}={v:.3g}" for k, v in metrics.items()))

    def on_sample(step: int, grid) -> None:
        if run is not None:
            run.log_image(grid, key="samples", step=step)

    try:
        if cfg.family == "diffusion":
            return train_diffusion(cfg, data, out_dir=out_dir, runtime=runtime, on_step=on_step, log=log,
                                   on_sample=on_sample)
        train = train_vae if cfg.family == "vae" else core.train_dcgan
        return train(cfg, data, out_dir=out_dir, runtime=runtime, feature_net=feature_net, init_from=init_state,
                     on_step=on_step, log=log, on_sample=on_sample)
    except core.TrainingDiverged as exc:
        raise StageFailed(f"{dataset}: {exc} (the last good checkpoint is kept in {out_dir})") from exc
    except CorruptCheckpoint as exc:
        raise StageFailed(f"{dataset}: {exc}") from exc


def _register(tracker: Tracker, run, dataset: str, reader, conditioning: str, captions, generator_file: Path,
              stamp: str, extractor_version, result, family: str, guidance: float | None = None):
    """The generator as a models-from-code version of imagegen-generator-<dataset>, alias `candidate`."""
    import pandas as pd

    name = registered_name("generator", dataset)
    example = pd.DataFrame({"label": [reader.class_names[0] if conditioning == "class" else None],
                            "prompt": [captions.examples[0] if captions is not None else None],
                            "seed": [0], "count": [1]})
    mv = run.register_code_model(
        code_file=SERVING_CODE, artifacts={"generator": str(generator_file)}, name=name,
        example=example, params={"format": "png", **({"guidance": guidance} if guidance is not None else {})},
        metadata={"dataset": dataset, "shards": stamp, "conditioning": conditioning, "family": family},
        tags={"imagegen.shards": stamp, EXTRACTOR_VERSION_TAG: str(extractor_version), FAMILY_TAG: family,
              "imagegen.conditioning": conditioning, "imagegen.mlflow_run": run.id,
              "imagegen.checkpoint": str(result.checkpoint_path)})
    tracker.set_alias(name, CANDIDATE, mv.version)
    return mv


def run_dir(paths: DataPaths, dataset: str, cfg: core.DCGANConfig | DiffusionConfig, stamp: str) -> Path:
    """Same experiment + same data = same folder, so a killed run resumes, also with the fields RESUMABLE_CHANGES
    lets a resume change (more steps); anything else starts fresh. `extra` stays in the key: the stage keeps the
    experiment's other inputs there (init_from version, caption file, feature network)."""
    resumable = DIFFUSION_RESUMABLE if cfg.family == "diffusion" else RESUMABLE_CHANGES
    experiment = {k: v for k, v in cfg.to_dict().items() if k not in resumable - {"extra"}}
    key = hashlib.sha256(json.dumps([experiment, stamp], sort_keys=True, default=str).encode()).hexdigest()[:12]
    return paths.checkpoints(dataset) / f"{'diffusion' if cfg.family == 'diffusion' else 'dcgan'}-{key}"


def _init_from(tracker: Tracker, source: str) -> tuple[dict | None, str]:
    """The checkpoint logged with the source dataset's registered generator (its champion, else its newest
    version) and which version that is; not whichever local checkpoint folder was touched last."""
    if not source:
        return None, ""
    name = registered_name("generator", validate_dataset_name(source))
    mv = tracker.newest_or_champion(name)
    if mv is None:
        raise StageFailed(f"init_from={source!r}: no registered generator {name}; materialize dcgan_checkpoint "
                          f"for {source!r} first")
    with tempfile.TemporaryDirectory(prefix="imagegen-init-from-") as tmp:
        try:
            local = tracker.run_artifact(mv.run_id, f"checkpoint/{CHECKPOINT_FILE}", Path(tmp))
        except MissingArtifact as exc:
            raise MissingArtifact(
                f"init_from={source!r}: {name} v{mv.version} was registered from MLflow run {mv.run_id}, whose "
                f"checkpoint/{CHECKPOINT_FILE} cannot be read from the artifact store ({exc}). Restore the "
                f"store's artifacts folder, or train {source!r} again") from None
        return load_checkpoint(local), f"{name} v{mv.version}"


@dataclass
class TrainCaptions:
    vectors: np.ndarray  # (N_train, D) float32 in the train split's row order, or (N_train, L, D) float16 token
    #                      states (tokens=L); zero rows where found is False
    found: np.ndarray  # bool (N_train,): the image has a caption vector
    stamp: str  # content hash of captions.parquet: other caption vectors = another experiment
    examples: list[str]  # a few training captions, e.g. as prompts to try
    variant_vectors: np.ndarray | None = None  # (M, D) | (M, L, D): the train images' other captions (variants=True)
    variant_rows: np.ndarray | None = None  # int64 (M,): the train-split row each variant belongs to


def _train_captions(paths: DataPaths, dataset: str, reader, *, variants: bool = False,
                    tokens: int = 0) -> TrainCaptions:
    """caption_embeddings' vectors aligned to the train split's row order by sha256; with `variants`, also the
    train images' other captions (caption_variants.parquet, where the data has them), part of the stamp. With
    `tokens` > 0 each caption is its first `tokens` token states (caption_tokens.parquet) instead."""
    from imagegen_pipeline.ml.embeddings_store import embedding_matrix, rows_by_sha256
    from imagegen_pipeline.ml.prompt_score import CAPTIONS_FILE, VARIANTS_FILE, read_captions, vectors_for

    f = paths.embeddings(dataset) / CAPTIONS_FILE
    if not f.is_file():
        raise StageFailed(f"{dataset}: text conditioning needs caption vectors; no {f}: materialize "
                          "caption_embeddings first")
    frame = read_captions(paths.embeddings(dataset), split="train")
    vectors, found = vectors_for(reader.read_column("train", "sha256"), frame)
    as_tokens = _token_lookup(paths, dataset, tokens)
    if as_tokens is not None:
        rows = rows_by_sha256(reader.read_column("train", "sha256"), frame["sha256"].tolist())
        vectors, known = as_tokens([frame["caption"].iloc[r] if r >= 0 else "" for r in rows])
        found &= known
    if not found.any():
        raise StageFailed(f"{dataset}: {f} has no caption for any training image (stale? the shards changed "
                          "since): rematerialize caption_embeddings")
    examples = sorted(set(frame["caption"].tolist()))
    step = max(1, len(examples) // 8)
    stamp = hashlib.sha256(f.read_bytes())
    variant_vectors = variant_rows = None
    vf = paths.embeddings(dataset) / VARIANTS_FILE
    if variants and vf.is_file():
        table = read_captions(paths.embeddings(dataset), split="train", name=VARIANTS_FILE)
        rows = rows_by_sha256(table["sha256"].tolist(), reader.read_column("train", "sha256"))
        variant_vectors, variant_rows = embedding_matrix(table)[rows >= 0], rows[rows >= 0].astype(np.int64)
        if as_tokens is not None:
            variant_vectors, known = as_tokens(table["caption"][rows >= 0].tolist())
            variant_vectors, variant_rows = variant_vectors[known], variant_rows[known]
        stamp.update(vf.read_bytes())
    return TrainCaptions(vectors, found, stamp.hexdigest()[:16], examples[::step][:8], variant_vectors, variant_rows)


def _token_lookup(paths: DataPaths, dataset: str, tokens: int):
    """captions -> (token states (N, tokens, D), known (N,)) from caption_tokens.parquet; None for tokens = 0."""
    if not tokens:
        return None
    from imagegen_pipeline.ml.caption_tokens import CaptionTokens

    try:
        table = CaptionTokens.read(paths.embeddings(dataset))
    except FileNotFoundError as exc:
        raise StageFailed(f"{dataset}: a token-conditioned model (text_tokens={tokens}) trains on caption token "
                          f"states: {exc}") from None
    try:
        table.lookup([], tokens)
    except ValueError as exc:
        raise StageFailed(f"{dataset}: {exc}") from None
    return lambda captions: table.lookup(captions, tokens)


def _extractor_version(paths: DataPaths, dataset: str) -> str | None:
    f = paths.models(dataset) / EXTRACTOR_SUMMARY
    return str(json.loads(f.read_text()).get("registered_version")) if f.is_file() else None
