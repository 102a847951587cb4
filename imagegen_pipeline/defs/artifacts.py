"""The assets by key: an asset names those it depends on here (`deps=[...]`), so no asset module imports another.
The files they leave for each other are named in `stages/artifacts.py`."""

import dagster as dg

RAW_IMAGES, IMAGE_SHARDS = dg.AssetKey("raw_images"), dg.AssetKey("image_shards")
FEATURE_EXTRACTOR, IMAGE_EMBEDDINGS = dg.AssetKey("feature_extractor"), dg.AssetKey("image_embeddings")
CAPTION_EMBEDDINGS, DCGAN_CHECKPOINT = dg.AssetKey("caption_embeddings"), dg.AssetKey("dcgan_checkpoint")
EVALUATION_REPORT = dg.AssetKey("evaluation_report")
