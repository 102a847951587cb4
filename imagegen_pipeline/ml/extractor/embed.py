"""Embeddings (and class probabilities) for many uint8 images: batched, inference mode, float32 on CPU."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from imagegen_pipeline.ml.extractor.network import EMBED_DIM, ExtractorNet
from imagegen_pipeline.ml.runtime import Runtime
from imagegen_pipeline.ml.shard_reader import to_float


# Images per forward pass when the caller gives none. Small on CPU, where a batch's activations must stay in cache:
# at 64 px on 2 cores, 32 ran 1.6x faster than 256 (1,400-2,200 vs 660-920 img/s, channels-last).
DEFAULT_BATCH = {"cpu": 32, "cuda": 256}


def embed_images(model: ExtractorNet, images_uint8: torch.Tensor, *, runtime: Runtime, batch_size: int | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (N, C, H, W) -> (embeddings (N, 1280), probs (N, K) or None when the model has no head).

    Moves `model` to the runtime's device and leaves it in eval mode; pixels travel as uint8 (4x less copying).
    The batch size does not change the numbers (bit-identical at 32 and 256 on CPU).
    """
    batch_size = batch_size or DEFAULT_BATCH.get(runtime.device.type, 256)
    images_uint8 = torch.as_tensor(images_uint8)
    n = len(images_uint8)
    model = runtime.to_device(model).eval()
    emb = np.empty((n, EMBED_DIM), dtype=np.float32)
    probs = np.empty((n, model.num_classes), dtype=np.float32) if model.num_classes > 0 else None
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = to_float(images_uint8[start:start + batch_size].to(runtime.device, non_blocking=True))  # (B, C, H, W)
            if runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                e, logits = model.embed_and_logits(x)  # (B, 1280), (B, K)
            emb[start:start + len(x)] = e.float().cpu().numpy()
            if probs is not None:
                probs[start:start + len(x)] = torch.softmax(logits.float(), dim=1).cpu().numpy()
            if on_progress is not None:
                on_progress(min(start + batch_size, n), n)
    return emb, probs
