"""z-sensitivity: does the generator still listen to its noise? Logged while training, so that a collapse (one
picture per label) shows on the MLflow curves when it happens instead of after promotion."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from imagegen_pipeline.ml.dcgan.config import DCGANConfig
from imagegen_pipeline.ml.dcgan.sample import render


def pixel_spread(images_uint8: np.ndarray | torch.Tensor) -> float:
    """Mean over pixels of the std across images, in [0, 1] units: 0 when every image is the same."""
    x = torch.as_tensor(np.asarray(images_uint8)).reshape(len(images_uint8), -1).double() / 255.0
    return float(x.std(0).mean()) if len(x) > 1 else 0.0


def within_label_spread(images_uint8: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Mean over labels of the pixel spread among that label's images (0 = one picture per label)."""
    labels = np.asarray(labels)
    return float(np.mean([pixel_spread(images_uint8[labels == c]) for c in np.unique(labels)]))


class ZSensitivity:
    """Pixel spread across `per` noise vectors for each of up to `conditions` fixed conditions (labels or the
    first captions), as a share of the spread of real images under the same condition (the real images of one
    label; for text and unconditional models, a random sample of all images). ~0 = collapse, ~1 = as varied as
    the data."""

    def __init__(self, cfg: DCGANConfig, images: torch.Tensor, labels: torch.Tensor | None,
                 text: torch.Tensor | None, *, conditions: int = 10, per: int = 8, seed: int = 4321):
        g = torch.Generator().manual_seed(seed)
        self.cond = None
        if cfg.conditioning == "class":
            present = torch.unique(labels[labels >= 0])[:conditions]
            self.cond = present.repeat_interleave(per)  # (K * per,)
            spreads = [pixel_spread(images[labels == c][:256]) for c in present.tolist()]
        else:
            idx = torch.randperm(len(images), generator=g)[:256]
            spreads = [pixel_spread(images[idx])]
            if cfg.conditioning == "text":
                k = min(conditions, len(text))
                self.cond = text[:k].float().repeat_interleave(per, 0)  # (k * per, text_dim)
        self.real = float(np.mean(spreads))
        self.z = torch.randn(per if self.cond is None else len(self.cond), cfg.z_dim, generator=g)
        self.per = per

    def __call__(self, generator: nn.Module, runtime=None) -> float:
        images = render(generator, self.z, self.cond, runtime=runtime)  # (K * per, H, W, C)
        groups = images.reshape(-1, self.per, *images.shape[1:])
        return float(np.mean([pixel_spread(g) for g in groups])) / max(self.real, 1e-12)
