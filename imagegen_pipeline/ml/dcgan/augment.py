"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to real and fake images alike.

D never sees an un-augmented image, so it cannot memorise a small training set, and because every op is
differentiable G still gets gradients through the augmented fakes. Port of the authors' DiffAugment_pytorch.py;
inputs are in [-1, 1], each image gets its own random draw.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)


def _saturation(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + mean


def _contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + mean


def _grid(n: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    return torch.meshgrid(torch.arange(n, device=device), torch.arange(h, device=device),
                          torch.arange(w, device=device), indexing="ij")


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift by up to ratio * side pixels, filling with zeros (mid-grey)."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    tx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    gb, gy, gx = _grid(n, h, w, x.device)
    gy = torch.clamp(gy + ty + 1, 0, h + 1)
    gx = torch.clamp(gx + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # (N, H+2, W+2, C)
    return padded[gb, gy, gx].permute(0, 3, 1, 2)  # (N, C, H, W)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of side ratio * side."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    gb, gy, gx = _grid(n, ch, cw, x.device)
    gy = torch.clamp(gy + oy - ch // 2, 0, h - 1)
    gx = torch.clamp(gx + ox - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gy, gx] = 0
    return x * mask.unsqueeze(1)


POLICIES = {"color": (_brightness, _saturation, _contrast), "translation": (_translation,), "cutout": (_cutout,)}


def diff_augment(x: torch.Tensor, policy: list[str] | str) -> torch.Tensor:
    """Apply the named augmentations (a list or a comma-separated string) in order; [] returns x unchanged."""
    names = [p.strip() for p in policy.split(",") if p.strip()] if isinstance(policy, str) else list(policy)
    for name in names:
        for fn in POLICIES[name]:
            x = fn(x)
    return x
