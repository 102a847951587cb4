"""LPIPS (Zhang et al. 2018) with the shift-tolerant AlexNet weights of ST-LPIPS (Ghildyal & Liu 2022), in plain
PyTorch. The stlpips-pytorch package only supplies the weights (converted to safetensors at install time by
`lpips_weights`); none of its code runs here.

The network is stlpips' `alexnet(variant="shift_tolerant")`: AlexNet's five conv layers, the first at stride 1,
and every downsampling a reflect-padded [1,2,1] blur followed by stride 2 (so a one-pixel shift barely moves
the features, which is what we want when asking "is this sample a copy of that training image"). LPIPS
version 0.1: inputs in [-1, 1] are shifted and scaled per channel, each layer's features are unit-normalised
over channels, squared differences are weighted per channel (the linear layers), averaged over positions and
summed over the five layers. 0 for identical images; larger = more different (typical pairs: 0.1-0.7).

Inputs are uint8 or float in [0, 1], (N, 1|3, H, W); grey is repeated to three channels. Images whose short
side is under 64 px are upsampled (bilinear, align_corners=False) so it is 64: the linear layers were calibrated
on 64x64 patches (BAPPS), and below ~24 px the network's last feature maps vanish. So a 32-px dataset is scored
at 64 px, which costs 4x the operations of 32 px but keeps the receptive fields where the weights were fitted.

Because the per-channel weights are non-negative, LPIPS(x, y) is exactly the squared Euclidean distance between
`embed(x)` and `embed(y)` (features times sqrt(weight), divided by sqrt(positions)); the metrics use that to
score many pairs and nearest neighbours from one forward pass per image.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imagegen_pipeline.ml.metrics.lpips_weights import VARIANT, load_converted

CHANNELS = (64, 192, 384, 256, 256)
MIN_SIZE = 64  # short side images are upsampled to (the BAPPS patch size the linear layers were fitted on)
EPS = 1e-10  # the reference's normalize_tensor epsilon


class BlurPool(nn.Module):
    """stlpips' Downsample(filt_size=3, stride=2, pad_more=True): reflect-pad 2, depthwise [1,2,1]^2/16, stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("filt", torch.zeros(channels, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class LPIPS(nn.Module):
    """ST-LPIPS (AlexNet, v0.1 scaling): `distance(x, y)` -> (N,), `embed(x)` -> (N, D) with distance = |dE|^2."""

    variant = VARIANT

    def __init__(self, state: dict[str, torch.Tensor] | None = None, *, min_size: int = MIN_SIZE):
        super().__init__()
        self.min_size = min_size
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 64, 11, stride=1, padding=2)
        self.blur1 = BlurPool(64)
        self.blur2 = BlurPool(64)
        self.conv2 = nn.Conv2d(64, 192, 5, padding=2)
        self.blur3 = BlurPool(192)
        self.conv3 = nn.Conv2d(192, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 256, 3, padding=1)
        self.conv5 = nn.Conv2d(256, 256, 3, padding=1)
        for i, c in enumerate(CHANNELS):
            self.add_module(f"lin{i}", nn.Conv2d(c, 1, 1, bias=False))
        self.load_state_dict(load_converted() if state is None else state, strict=True)
        self.requires_grad_(False)
        self.eval()
        if any(float(getattr(self, f"lin{i}").weight.min()) < 0 for i in range(len(CHANNELS))):
            raise ValueError("LPIPS linear weights must be non-negative (embed() relies on it)")

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None, **kwargs) -> "LPIPS":
        """From the converted safetensors (default: where `lpips_weights` wrote it)."""
        return cls(load_converted(path), **kwargs)

    def prepare(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 or [0, 1] float (N, 1|3, H, W) -> the scaled float32 (N, 3, H', W') the network reads."""
        x = torch.as_tensor(images)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected (N, 1|3, H, W) images, got {tuple(x.shape)}")
        x = x.to(self.shift.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (N, 3, H, W)
        short = min(x.shape[-2:])
        if short < self.min_size:
            size = [round(s * self.min_size / short) for s in x.shape[-2:]]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # (N, 3, >= 64, >= 64)
        return (2 * x - 1 - self.shift) / self.scale

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Prepared input -> the five unit-normalised (over channels) feature maps."""
        f1 = F.relu(self.blur1(self.conv1(x)))
        f2 = F.relu(self.conv2(self.blur2(F.max_pool2d(f1, 3, 1))))
        f3 = F.relu(self.conv3(self.blur3(F.max_pool2d(f2, 3, 1))))
        f4 = F.relu(self.conv4(f3))
        f5 = F.relu(self.conv5(f4))
        return [f / (f.pow(2).sum(1, keepdim=True).sqrt() + EPS) for f in (f1, f2, f3, f4, f5)]

    def forward(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N,) LPIPS of each pair; differentiable in float inputs (the projection optimises through it)."""
        fx, fy = self.features(self.prepare(x)), self.features(self.prepare(y))
        total = 0
        for i, (a, b) in enumerate(zip(fx, fy)):
            total = total + getattr(self, f"lin{i}")((a - b).pow(2)).mean((1, 2, 3))  # (N,)
        return total

    def distance(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N,) LPIPS of x[i] and y[i]: uint8 or [0, 1] float (N, C, H, W); y may be a single image (1, C, H, W)."""
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if len(y) == 1 and len(x) > 1:
            y = y.expand(len(x), *y.shape[1:])
        if x.shape != y.shape:
            raise ValueError(f"need two batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        return self(x, y)

    def embedding(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, D) features times sqrt(weight / positions), so LPIPS(x_i, x_j) = |e_i - e_j|^2; differentiable."""
        feats = self.features(self.prepare(images))
        return torch.cat([(f * getattr(self, f"lin{k}").weight.view(1, -1, 1, 1).sqrt()).flatten(1)
                          / float(f.shape[-1] * f.shape[-2]) ** 0.5 for k, f in enumerate(feats)], 1)

    @torch.no_grad()
    def embed(self, images: torch.Tensor | np.ndarray, *, batch_size: int = 32) -> torch.Tensor:
        """`embedding` in batches, without gradients: float32 (N, D); D is ~158k at 64 px, so embed subsets."""
        images = torch.as_tensor(images)
        out = [self.embedding(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 0)


@functools.lru_cache(maxsize=2)
def default_lpips(min_size: int = MIN_SIZE) -> LPIPS:
    """One shared instance per process (the metrics and the projection reuse it); raises MissingLPIPSWeights."""
    return LPIPS(min_size=min_size)


def sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) squared Euclidean distances of embeddings, i.e. LPIPS of every pair."""
    return ((a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)).clamp_(min=0.0)


def mean_pairwise_lpips(embeddings: torch.Tensor) -> float:
    """Mean LPIPS over all pairs i != j of a set, in O(N D): 2N/(N-1) * (mean |e|^2 - |mean e|^2)."""
    e = embeddings.double()
    n = len(e)
    if n < 2:
        raise ValueError(f"need at least 2 embeddings, got {n}")
    mean = e.mean(0)
    return float(2 * n / (n - 1) * ((e * e).sum(1).mean() - mean @ mean))
