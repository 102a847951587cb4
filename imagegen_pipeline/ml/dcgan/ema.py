"""Exponential moving average of the generator's weights: smoother samples than the raw, oscillating G.

Averaged weights need their own BatchNorm statistics. The raw G's running mean and variance describe the raw
G's activations; pairing them with the averaged weights normalises with the wrong numbers and washes the
images out (grey backgrounds, one picture per label). So `recalibrate` re-estimates them for the averaged
weights (the "standing statistics" of BigGAN) before the EMA generator is sampled, checkpointed or exported.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, draw_inputs: Callable[[], tuple], *, batches: int = 16) -> None:
    """Replace every BatchNorm's running statistics with the plain average over `batches` forward passes of
    `model(*draw_inputs())` in train mode; the model is left in eval mode with its weights untouched."""
    layers = batchnorm_layers(model)
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    try:
        for _ in range(batches):
            model(*draw_inputs())
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.eval()


class EMA:
    """Holds `model`, a frozen eval-mode copy of the tracked generator; `update` after each G step."""

    def __init__(self, source: nn.Module, *, beta: float, start_step: int = 0):
        self.beta, self.start_step = beta, start_step
        self.model = copy.deepcopy(source).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, source: nn.Module, step: int) -> None:
        """Before `start_step` copy the weights (early G changes too fast to average); then lerp toward them.
        The BatchNorm statistics are left alone here: they belong to the averaged weights (`recalibrate`)."""
        ema_p = list(self.model.parameters())
        src_p = [p.detach() for p in source.parameters()]
        if step < self.start_step:
            torch._foreach_copy_(ema_p, src_p)
        else:
            torch._foreach_lerp_(ema_p, src_p, 1.0 - self.beta)

    def recalibrate(self, draw_inputs: Callable[[], tuple], *, batches: int = 16) -> None:
        """Give the averaged weights their own BatchNorm statistics (see the module docstring)."""
        recalibrate_batchnorm(self.model, draw_inputs, batches=batches)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
