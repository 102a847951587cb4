"""The registered feature extractor as an MLflow pyfunc: uint8 images in, embeddings and class probabilities out.

Logged with `python_model=<this file>` (models-from-code); the weights are a safetensors artifact, so loading
the model never unpickles anything.

    model = mlflow.pyfunc.load_model("models:/imagegen-extractor-mnist@champion")
    out = model.predict(images_uint8_nchw)   # {"embedding": (N, 1280) float32, "probs": (N, K) float32}
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class ExtractorModel(PythonModel):
    def load_context(self, context) -> None:
        from imagegen_pipeline.ml.extractor import load_extractor
        from imagegen_pipeline.ml.runtime import resolve_runtime

        self.runtime = resolve_runtime("auto", cpu_channels_last=True)
        self.model, self.meta = load_extractor(context.artifacts["extractor"])

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> dict[str, np.ndarray]:
        """Typed, so MLflow 3 passes the array through as it is and does not warn at every registration and load."""
        import torch

        from imagegen_pipeline.ml.extractor import embed_images

        images = np.asarray(model_input)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 images (N, C in {{1, 3}}, H, W), got {images.dtype} {images.shape}")
        emb, probs = embed_images(self.model, torch.from_numpy(images.copy()), runtime=self.runtime)
        return {"embedding": emb} if probs is None else {"embedding": emb, "probs": probs}


mlflow.models.set_model(ExtractorModel())
