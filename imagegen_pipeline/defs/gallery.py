"""Asset `sample_gallery`: a fixed-seed HTML gallery of the latest trained generator (per class, interpolations,
nearest training neighbours), one folder per registered version under reports/<dataset>/gallery/."""



import dagster as dg
import numpy as np
import torch
from pydantic import Field

from imagegen_pipeline.atomic import write_json_atomic
from imagegen_pipeline.defs.artifacts import DCGAN_CHECKPOINT, IMAGE_EMBEDDINGS, fine_tuned_extractor, trained_generator
from imagegen_pipeline.defs.common import dataset_of, open_shards
from imagegen_pipeline.defs.metadata import png_markdown
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.ml import gallery as core
from imagegen_pipeline.ml.embeddings_store import EMBEDDINGS_FILE, embedding_matrix, read_embeddings
from imagegen_pipeline.ml.runtime import resolve_runtime

GROUP = "evaluation"
GALLERY_DIR = "gallery"  # under reports/<dataset>/: one v<version>/ folder per generator version
LATEST_FILE = "latest.json"  # beside the version folders: which one is newest (a file, not a symlink)


class SampleGalleryConfig(dg.Config):
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda'.")
    seeds_per_class: int = Field(default=8, description="Samples per class grid (seeds 0..n-1, the same for every "
                                                        "class).")
    fixed_seed_count: int = Field(default=64, description="Images in the fixed-seed grid (seeds 0..n-1, labels "
                                                          "cycling over the classes): the grid to compare runs by.")
    interpolation_rows: int = Field(default=4, description="Latent interpolation strips, each within one class.")
    interpolation_steps: int = Field(default=8, description="Images per interpolation strip.")
    interpolation_mode: str = Field(default="slerp", description="'slerp' (spherical) or 'lerp' (straight line).")
    nn_samples: int = Field(default=16, description="Samples shown beside their nearest training image; 0 skips.")
    max_train_images: int | None = Field(default=20000, description="Cap on training images searched for "
                                                                    "neighbours (a fixed random subset); null = all.")


def _train_set(paths, dataset: str, reader, cap: int | None, log) -> tuple:
    """(train images uint8 (N, C, H, W), their embeddings (N, D)), rows matched by sha256; (None, None) when the
    embeddings are missing."""
    if not (paths.embeddings(dataset) / EMBEDDINGS_FILE).is_file():
        log.warning(f"{dataset}: no embeddings; materialize image_embeddings for the nearest-neighbour panel")
        return None, None
    frame = read_embeddings(paths.embeddings(dataset), split="train")
    position = {sha: i for i, sha in enumerate(reader.read_column("train", "sha256"))}
    rows = np.array([position.get(sha, -1) for sha in frame["sha256"]], dtype=np.int64)
    keep = np.flatnonzero(rows >= 0)
    if len(keep) < len(frame):
        log.warning(f"{dataset}: {len(frame) - len(keep)} embeddings match no training image (stale embeddings?)")
    if cap is not None and len(keep) > cap:
        keep = np.sort(np.random.default_rng(0).choice(keep, cap, replace=False))
    images, _ = reader.load_split("train")
    return images[torch.from_numpy(rows[keep])], embedding_matrix(frame)[keep]


@dg.asset(partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN, group_name=GROUP,
          kinds={"pytorch", "html"}, deps=[DCGAN_CHECKPOINT, IMAGE_EMBEDDINGS],
          description="A fixed-seed HTML gallery of the latest generator: a grid per class, the fixed-seed grid, "
                      "latent interpolations and each sample beside its nearest training image, under "
                      "reports/<dataset>/gallery/v<version>/ (latest.json names the newest).")
def sample_gallery(context: dg.AssetExecutionContext, config: SampleGalleryConfig,
                   storage: ImagegenStorage) -> dg.MaterializeResult:
    dataset = dataset_of(context)
    paths = storage.paths
    runtime = resolve_runtime(config.device)
    summary, generator, cfg = trained_generator(paths, dataset, device=runtime.device)
    name, version = summary["registered_model"], str(summary["version"])
    if cfg.conditioning == "text":  # pictures of a text model are drawn per prompt: prompt_gallery (text_job)
        context.log.info(f"{name} v{version} is text-conditioned: its pictures are in prompt_gallery")
        return dg.MaterializeResult(metadata={"generator": f"{name} v{version}",
                                              "skipped": "text-conditioned generator: see prompt_gallery"})
    reader = open_shards(paths, dataset)
    extractor = fine_tuned_extractor(paths, dataset, device=runtime.device)
    train_images, train_emb = (None, None)
    if extractor is not None and config.nn_samples > 0:
        train_images, train_emb = _train_set(paths, dataset, reader, config.max_train_images, context.log)
    gallery_root = paths.reports(dataset) / GALLERY_DIR
    folder = f"v{version}"
    context.log.info(f"{dataset}: gallery of {name} v{version} into {gallery_root / folder} on {runtime.describe()}")
    try:
        result = core.build_gallery(
            generator, cfg, out_dir=gallery_root / folder, runtime=runtime,
            class_names=list(cfg.extra.get("class_names") or reader.class_names), train_images_uint8=train_images,
            train_embeddings=train_emb, extractor=extractor, seeds_per_class=config.seeds_per_class,
            fixed_seed_count=config.fixed_seed_count, interpolation_rows=config.interpolation_rows,
            interpolation_steps=config.interpolation_steps, interpolation_mode=config.interpolation_mode,
            nn_samples=config.nn_samples, model_name=name, model_version=version)
    except ValueError as exc:
        raise dg.Failure(f"{dataset}: {exc}") from exc
    write_json_atomic(gallery_root / LATEST_FILE, {"folder": folder, "version": version, "registered_model": name,
                                                   "index": f"{folder}/{core.INDEX_FILE}"})
    for note in result["notes"]:
        context.log.warning(note)
    out_dir = gallery_root / folder
    nn = result["nearest_neighbours"]
    metadata = {
        "fixed_seeds": png_markdown((out_dir / core.FIXED_SEEDS_FILE).read_bytes(),
                                    f"{result['fixed_seeds']['count']} fixed seeds"),
        "per_class_grids": result["per_class_count"],
        "index": dg.MetadataValue.path(str(out_dir / core.INDEX_FILE)),
        "generator_version": version,
        "registered_model": f"{name} v{version}",
        "files": len(result["files"]),
        "nn_distance_mean": round(nn["mean_distance"], 6) if nn else None,
        "nn_train_median": round(nn["train_nn_median"], 6) if nn else None,
    }
    if result["notes"]:
        metadata["notes"] = "; ".join(result["notes"])
    return dg.MaterializeResult(metadata=metadata)


gallery_assets = [sample_gallery]
