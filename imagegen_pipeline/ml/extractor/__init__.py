"""A fine-tuned MobileNetV2 feature extractor: plain PyTorch, no Dagster or MLflow."""

from imagegen_pipeline.ml.extractor.analysis import (confusion_png, embedding_map_png, load_extractor, near_duplicates,
                                                     pca_2d, save_extractor)
from imagegen_pipeline.ml.extractor.config import ExtractorConfig
from imagegen_pipeline.ml.extractor.embed import embed_images
from imagegen_pipeline.ml.extractor.network import (EMBED_DIM, ExtractorNet, build_extractor, freeze_backbone,
                                                    unfreeze_top)
from imagegen_pipeline.ml.extractor.train import ExtractorReport, FinetuneResult, finetune, train_extractor
from imagegen_pipeline.ml.extractor.weights import (CorruptWeightsError, MissingWeightsError, find_mobilenet_weights,
                                                    verify_sha256_prefix)

__all__ = [
    "EMBED_DIM", "CorruptWeightsError", "ExtractorConfig", "ExtractorNet", "ExtractorReport", "FinetuneResult",
    "MissingWeightsError", "build_extractor", "confusion_png", "embed_images", "embedding_map_png",
    "find_mobilenet_weights", "finetune", "freeze_backbone", "load_extractor", "near_duplicates", "pca_2d",
    "save_extractor", "train_extractor", "unfreeze_top", "verify_sha256_prefix",
]
