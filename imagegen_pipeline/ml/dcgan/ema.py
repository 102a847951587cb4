"""Exponential moving average of the generator's weights: smoother samples than the raw, oscillating G."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds `model`, a frozen eval-mode copy of the tracked generator; `update` after each G step."""

    def __init__(self, source: nn.Module, *, beta: float, start_step: int = 0):
        self.beta, self.start_step = beta, start_step
        self.model = copy.deepcopy(source).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, source: nn.Module, step: int) -> None:
        """Before `start_step` copy the weights (early G changes too fast to average); then lerp toward them."""
        ema_p = list(self.model.parameters())
        src_p = [p.detach() for p in source.parameters()]
        if step < self.start_step:
            torch._foreach_copy_(ema_p, src_p)
        else:
            torch._foreach_lerp_(ema_p, src_p, 1.0 - self.beta)
        # BatchNorm running statistics are already averages: copy them
        torch._foreach_copy_(list(self.model.buffers()), list(source.buffers()))

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
