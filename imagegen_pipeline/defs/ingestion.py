"""Assets `raw_images` and `image_shards`: landing folder -> manifest -> Parquet tensor shards."""


import time

import dagster as dg
from pydantic import Field

from imagegen_pipeline.datasets.landing import read_dataset_defaults
from imagegen_pipeline.defs.metadata import materialized
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.ingest.manifest import build_manifest, read_manifest, write_manifest
from imagegen_pipeline.ingest.pixel_store import store_path
from imagegen_pipeline.ingest.preview import preview_grid_png
from imagegen_pipeline.ingest.shards import ShardConfig, write_shards
from imagegen_pipeline.ingest.validate import PixelSpec, ValidationConfig
from imagegen_pipeline.ml.grids import image_grid, png_bytes
from imagegen_pipeline.ml.shard_reader import ShardReader
from imagegen_pipeline.paths import validate_dataset_name
from imagegen_pipeline.stages.outputs import FilePath, Markdown, Png, histogram, markdown_table

GROUP = "ingestion"


def _default_pixels(landing) -> PixelSpec:
    """The shards' size when image_shards' config leaves it unset: dataset.json's, else 64 px, channels auto.
    raw_images keeps pixels of this size from its one decode, so image_shards need not decode again."""
    defaults = read_dataset_defaults(landing)
    return PixelSpec(defaults.resolution, defaults.channels) if defaults else PixelSpec(64, "auto")


class RawImagesConfig(dg.Config):
    max_pixels: int = Field(default=40_000_000, description="Refuse images declaring more pixels (decompression bombs).")
    max_file_mb: int = Field(default=100, description="Refuse files larger than this many MiB, unread.")
    min_side: int = Field(default=8, description="Refuse images smaller than this on either side.")
    workers: int = Field(default=0, description="Decoding processes; 0 = one per CPU core.")

    def to_core(self) -> ValidationConfig:
        return ValidationConfig(max_pixels=self.max_pixels, max_bytes=self.max_file_mb * 2**20, min_side=self.min_side)


@dg.asset(partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN,
          group_name=GROUP, kinds={"python", "parquet"},
          description="Every file of data/raw/<dataset>/ decoded and validated: a manifest with sha256, "
                      "status (ok / duplicate / quarantined) and the reason.")
def raw_images(context: dg.AssetExecutionContext, config: RawImagesConfig,
               storage: ImagegenStorage) -> dg.MaterializeResult:
    dataset = validate_dataset_name(context.partition_key)
    paths = storage.paths
    landing, manifest_path = paths.raw(dataset), paths.manifest(dataset)
    t0 = time.perf_counter()
    df, stats = build_manifest(landing, previous=read_manifest(manifest_path), cfg=config.to_core(),
                               workers=config.workers, pixels=_default_pixels(landing),
                               store=store_path(manifest_path), log=context.log.info)
    write_manifest(df, manifest_path)
    seconds = time.perf_counter() - t0
    accepted = df[df["status"] == "ok"]
    bad = df[df["status"] == "quarantined"]
    metadata = {
        "dagster/row_count": len(df),
        "accepted": stats.counts["ok"],
        "duplicates": stats.counts["duplicate"],
        "quarantined": stats.counts["quarantined"],
        "decoded_this_run": stats.decoded,
        "unchanged_reused": stats.reused,
        "pixels_kept_for_shards": stats.stored,
        "images_per_second": round(stats.decoded / seconds, 1) if seconds else 0.0,
        "manifest": FilePath(str(manifest_path)),
        "class_histogram": histogram(accepted["label"]),
    }
    if len(bad):
        reasons = bad["reason"].str.split(":").str[0].value_counts()
        metadata["quarantine_reasons"] = Markdown(
            markdown_table(["reason", "files"], reasons.items()) + "\n\n" +
            markdown_table(["path", "reason"], bad[["path", "reason"]].head(25).itertuples(index=False)))
    if (png := preview_grid_png(landing, accepted)) is not None:
        metadata["preview"] = Png(png, "accepted images")
    context.log.info(f"{dataset}: {stats.counts} in {seconds:.1f}s")
    return materialized(metadata)


class ImageShardsConfig(dg.Config):
    resolution: int | None = Field(default=None, description="Square output size; unset = the dataset's default "
                                                              "(dataset.json), else 64.")
    channels: str | None = Field(default=None, description="'L' or 'RGB'; unset = the dataset's default, where "
                                                           "'auto' means L only if every accepted image is grayscale.")
    val_fraction: float = Field(default=0.1, description="Share of images in the val split (chosen by content hash) "
                                                         "among rows whose labels.csv declares no source_split.")
    use_source_split: bool = Field(default=True, description="Keep the split labels.csv declares (MNIST's official "
                                                             "test images -> val); false = content hash for all.")
    workers: int = Field(default=0, description="Decoding processes; 0 = one per CPU core.")


@dg.asset(partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN,
          group_name=GROUP, kinds={"pytorch", "parquet"}, deps=[raw_images],
          description="Accepted images resized to a square uint8 tensor in Parquet shards (train/val split by "
                      "content hash) plus description.json; pixel / 255 gives [0, 1].")
def image_shards(context: dg.AssetExecutionContext, config: ImageShardsConfig,
                 storage: ImagegenStorage) -> dg.MaterializeResult:
    dataset = validate_dataset_name(context.partition_key)
    paths = storage.paths
    landing = paths.raw(dataset)
    manifest = read_manifest(paths.manifest(dataset))
    if manifest is None:
        raise dg.Failure(f"no manifest for {dataset!r}: materialize raw_images first")
    accepted = manifest[manifest["status"] == "ok"]
    default = _default_pixels(landing)
    channels = config.channels or default.channels
    if channels == "auto":
        channels = "L" if len(accepted) and bool(accepted["is_gray"].all()) else "RGB"
    cfg = ShardConfig(resolution=config.resolution or default.resolution, channels=channels,
                      val_fraction=config.val_fraction,
                      use_source_split=config.use_source_split, workers=config.workers)
    t0 = time.perf_counter()
    remote = paths.shards_location(dataset)  # $IMAGEGEN_SHARDS_URI: each generation is mirrored there too
    desc = write_shards(landing, accepted, paths.shards(dataset), cfg, pixels=store_path(paths.manifest(dataset)),
                        log=context.log.info, mirror=remote if isinstance(remote, str) else None)
    seconds = time.perf_counter() - t0
    reader = ShardReader(paths.shards(dataset))
    first = next(reader.iter_batches("train" if desc["splits"]["train"]["rows"] else "val"))
    grid = image_grid(first["images"][:64].permute(0, 2, 3, 1).numpy(), nrow=8, tile=max(32, cfg.resolution))
    return materialized({
        "dagster/row_count": desc["num_rows"],
        "train_rows": desc["splits"]["train"]["rows"],
        "val_rows": desc["splits"]["val"]["rows"],
        "shape_chw": str(tuple(desc["shape"])),
        "num_classes": len(desc["class_names"]),
        "class_names": ", ".join(desc["class_names"][:40]) + (" …" if len(desc["class_names"]) > 40 else ""),
        "shard_files": sum(len(s["files"]) for s in desc["splits"].values()),
        "images_per_second": round(desc["num_rows"] / seconds, 1) if seconds else 0.0,
        "pixels_from": desc["pixels_from"],
        "shards": FilePath(str(paths.shards(dataset))),
        "preview": Png(png_bytes(grid), "first shard images, as training sees them"),
    }, data_version=desc.get("content_key"))
