"""Stage `sample_gallery`: a fixed-seed HTML gallery of the latest trained generator (per class, interpolations,
nearest training neighbours), one folder per registered version under reports/<dataset>/gallery/."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from imagegen_pipeline.atomic import write_json_atomic
from imagegen_pipeline.ml import gallery as core
from imagegen_pipeline.ml.embeddings_store import EMBEDDINGS_FILE, embedding_matrix, read_embeddings, rows_by_sha256
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline.stages.artifacts import fine_tuned_extractor, trained_generator
from imagegen_pipeline.stages.common import open_shards
from imagegen_pipeline.stages.outputs import FilePath, Png, StageFailed

GALLERY_DIR = "gallery"  # under reports/<dataset>/: one v<version>/ folder per generator version
LATEST_FILE = "latest.json"  # beside the version folders: which one is newest (a file, not a symlink)


def draw_gallery(paths: DataPaths, dataset: str, *, device: str, seeds_per_class: int, fixed_seed_count: int,
                 interpolation_rows: int, interpolation_steps: int, interpolation_mode: str, nn_samples: int,
                 max_train_images: int | None, log: Callable[[str], None], warn: Callable[[str], None]) -> dict:
    """The gallery of the generator the last dcgan_checkpoint registered; the metadata of what was made."""
    runtime = resolve_runtime(device)
    summary, generator, cfg = trained_generator(paths, dataset, device=runtime.device)
    name, version = summary["registered_model"], str(summary["version"])
    if cfg.conditioning == "text":  # pictures of a text model are drawn per prompt: prompt_gallery (text_job)
        log(f"{name} v{version} is text-conditioned: its pictures are in prompt_gallery")
        return {"generator": f"{name} v{version}", "skipped": "text-conditioned generator: see prompt_gallery"}
    reader = open_shards(paths, dataset)
    extractor = fine_tuned_extractor(paths, dataset, device=runtime.device)
    train_images, train_emb = (None, None)
    if extractor is not None and nn_samples > 0:
        train_images, train_emb = _train_set(paths, dataset, reader, max_train_images, warn)
    gallery_root = paths.reports(dataset) / GALLERY_DIR
    folder = f"v{version}"
    log(f"{dataset}: gallery of {name} v{version} into {gallery_root / folder} on {runtime.describe()}")
    try:
        result = core.build_gallery(
            generator, cfg, out_dir=gallery_root / folder, runtime=runtime,
            class_names=list(cfg.extra.get("class_names") or reader.class_names), train_images_uint8=train_images,
            train_embeddings=train_emb, extractor=extractor, seeds_per_class=seeds_per_class,
            fixed_seed_count=fixed_seed_count, interpolation_rows=interpolation_rows,
            interpolation_steps=interpolation_steps, interpolation_mode=interpolation_mode,
            nn_samples=nn_samples, model_name=name, model_version=version)
    except ValueError as exc:
        raise StageFailed(f"{dataset}: {exc}") from exc
    write_json_atomic(gallery_root / LATEST_FILE, {"folder": folder, "version": version, "registered_model": name,
                                                   "index": f"{folder}/{core.INDEX_FILE}"})
    for note in result["notes"]:
        warn(note)
    out_dir = gallery_root / folder
    nn = result["nearest_neighbours"]
    metadata = {
        "fixed_seeds": Png((out_dir / core.FIXED_SEEDS_FILE).read_bytes(),
                           f"{result['fixed_seeds']['count']} fixed seeds"),
        "per_class_grids": result["per_class_count"],
        "index": FilePath(str(out_dir / core.INDEX_FILE)),
        "generator_version": version,
        "registered_model": f"{name} v{version}",
        "files": len(result["files"]),
        "nn_distance_mean": round(nn["mean_distance"], 6) if nn else None,
        "nn_train_median": round(nn["train_nn_median"], 6) if nn else None,
    }
    if result["notes"]:
        metadata["notes"] = "; ".join(result["notes"])
    return metadata


def _train_set(paths: DataPaths, dataset: str, reader, cap: int | None, warn) -> tuple:
    """(train images uint8 (N, C, H, W), their embeddings (N, D)), rows matched by sha256; (None, None) when the
    embeddings are missing."""
    if not (paths.embeddings(dataset) / EMBEDDINGS_FILE).is_file():
        warn(f"{dataset}: no embeddings; materialize image_embeddings for the nearest-neighbour panel")
        return None, None
    frame = read_embeddings(paths.embeddings(dataset), split="train")
    rows = rows_by_sha256(frame["sha256"].tolist(), reader.read_column("train", "sha256"))
    keep = np.flatnonzero(rows >= 0)
    if len(keep) < len(frame):
        warn(f"{dataset}: {len(frame) - len(keep)} embeddings match no training image (stale embeddings?)")
    if cap is not None and len(keep) > cap:
        keep = np.sort(np.random.default_rng(0).choice(keep, cap, replace=False))
    images, _ = reader.load_split("train")
    return images[torch.from_numpy(rows[keep])], embedding_matrix(frame)[keep]
