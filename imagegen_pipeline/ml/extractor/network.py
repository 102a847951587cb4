"""MobileNetV2 as a feature extractor for small images: [0, 1] pixels in, 1280-d embeddings and logits out.

The input adapter (grey -> RGB, resize, ImageNet normalisation) lives inside the module, so every caller,
including the DCGAN's frozen feature loss, feeds plain [0, 1] images and gets the same features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIM = 1280
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ExtractorNet(nn.Module):
    """Input adapter -> MobileNetV2 `features` -> global average pool -> (Dropout + Linear head)."""

    def __init__(self, num_classes: int, *, input_size: int = 96, dropout: float = 0.2):
        super().__init__()
        self.num_classes = int(num_classes)
        self.input_size = int(input_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        import torchvision  # here, not at import: it loads torch._dynamo (2 s), which processes that never build
        # the extractor (code server, daemon, ingest runs, most CLI commands) need not pay for

        self.features = torchvision.models.mobilenet_v2(weights=None).features  # 19 blocks, 3 -> 1280 channels
        self.head = (nn.Sequential(nn.Dropout(dropout), nn.Linear(EMBED_DIM, self.num_classes))
                     if self.num_classes > 0 else None)
        self.backbone_bn_eval = False  # set by freeze_backbone: BatchNorm keeps ImageNet statistics while training

    def adapt(self, x01: torch.Tensor) -> torch.Tensor:
        """(N, C in {1, 3}, H, W) in [0, 1] -> (N, 3, S, S) ImageNet-normalised, S = input_size."""
        if x01.ndim != 4 or x01.shape[1] not in (1, 3):
            raise ValueError(f"expected (N, 1 or 3, H, W) images in [0, 1], got {tuple(x01.shape)}")
        x = x01.expand(-1, 3, -1, -1) if x01.shape[1] == 1 else x01  # (N, 3, H, W)
        if x.shape[-2:] != (self.input_size, self.input_size):
            down = x.shape[-1] > self.input_size or x.shape[-2] > self.input_size
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=down)  # (N, 3, S, S)
        return (x - self.mean) / self.std

    def embed(self, x01: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> (N, 1280): the frozen-feature contract other stages rely on."""
        h = self.features(self.adapt(x01))  # (N, 1280, S/32, S/32)
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)  # (N, 1280)

    def embed_and_logits(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        e = self.embed(x01)  # (N, 1280)
        return e, (self.head(e) if self.head is not None else None)  # (N, K)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("this extractor has no head (num_classes=0); call embed()")
        return self.head(self.embed(x01))  # (N, K)

    def train(self, mode: bool = True) -> "ExtractorNet":
        """With `backbone_bn_eval`, backbone BatchNorm stays in eval mode: frozen blocks keep ImageNet's statistics,
        and unfrozen ones do too (Keras's fine-tuning advice), else batch statistics shift every feature at phase 2."""
        super().train(mode)
        if mode and self.backbone_bn_eval:
            for m in self.features.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self


def backbone_state_dict(torchvision_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's mobilenet_v2 state_dict -> our `features.*` keys (its 1000-class classifier dropped)."""
    return {k: v for k, v in torchvision_state_dict.items() if k.startswith("features.")}


def build_extractor(num_classes: int, *, pretrained: bool = True,
                    weights_state_dict: dict[str, torch.Tensor] | None = None, input_size: int = 96,
                    dropout: float = 0.2, allow_download: bool = False) -> ExtractorNet:
    """A fresh extractor; with `pretrained`, the backbone gets ImageNet weights (given, or found on disk)."""
    model = ExtractorNet(num_classes, input_size=input_size, dropout=dropout)
    if pretrained:
        if weights_state_dict is None:
            from imagegen_pipeline.ml.extractor.weights import find_mobilenet_weights

            weights_state_dict, _ = find_mobilenet_weights(allow_download=allow_download)
        state = backbone_state_dict(weights_state_dict)
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad_missing = [k for k in missing if k.startswith("features.")]
        if bad_missing or unexpected:
            raise ValueError(f"weights do not fit MobileNetV2: missing {bad_missing[:3]}, unexpected {unexpected[:3]}")
    return model


def freeze_backbone(model: ExtractorNet) -> ExtractorNet:
    """Phase 1: only the head learns; the backbone (and, from now on, its BatchNorm statistics) stays ImageNet's."""
    for p in model.features.parameters():
        p.requires_grad_(False)
    model.backbone_bn_eval = True
    return model


def unfreeze_top(model: ExtractorNet, n_blocks: int) -> list[nn.Parameter]:
    """Phase 2: make the last `n_blocks` feature blocks trainable; returns their parameters."""
    blocks = list(model.features)[len(model.features) - max(0, min(n_blocks, len(model.features))):]
    params = [p for b in blocks for p in b.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params
