"""Adversarial losses on raw D logits, computed in fp32 whatever precision D ran in."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    """D wants real logits high and fake (or mismatched) logits low."""
    real, fake = real.float(), fake.float()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()  # BCE with logits, targets 1 and 0


def g_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    """G wants D to score its images as real (non-saturating for BCE)."""
    fake = fake.float()
    return -fake.mean() if kind == "hinge" else F.softplus(-fake).mean()
