"""A small image classifier trained from scratch in seconds: the yardstick of the Classification Accuracy Score and
the augmentation metric, which ask how well a classifier *learns* from generated images, not how a fixed judge
scores them (that is `conditional_accuracy`, with the fine-tuned extractor).

Three stride-2 3x3 convolutions with BatchNorm and ReLU (widths w, 2w, 4w), the flattened feature map (where a
stroke is matters for digits: global average pooling cost 8 points on MNIST), dropout 0.3, a linear layer. At
32 px and w = 16 that is about 0.6 M multiply-adds per image; 300 steps of batch 64 take about 2 s on one CPU core
and reach 94% on MNIST's val split from 1,000 training images (max-pooled stride-1 convolutions: 95.6%, 3-4x the
time). AdamW with a cosine-decayed learning rate, a fixed number of steps whatever the data size (so classifiers
trained on different sets get the same budget, and the cost does not grow with the protocol), batches drawn epoch
by epoch from a seeded permutation, one torch thread on a CPU. Plain PyTorch, no Dagster or MLflow;
`fit_classifier(..., seed=s)` is reproducible on one machine and leaves the global random state as it found it.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from imagegen_pipeline.ml.runtime import seed_everything


@dataclass(frozen=True)
class ClassifierConfig:
    steps: int = 300  # optimizer steps, the same for every training set compared
    batch_size: int = 64
    lr: float = 3e-3  # AdamW peak, cosine-decayed to 0
    weight_decay: float = 5e-4
    width: int = 16  # channels of the first convolution (then 2x, 4x)
    dropout: float = 0.3  # on the flattened features
    cpu_threads: int = 1  # torch threads while fitting on a CPU (restored after): see `cpu_threads`


class SmallCNN(nn.Module):
    def __init__(self, channels: int, num_classes: int, *, size: tuple[int, int], width: int = 16,
                 dropout: float = 0.3):
        super().__init__()
        layers, c_in, (h, w) = [], channels, size
        for c_out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in, h, w = c_out, (h + 1) // 2, (w + 1) // 2
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(c_in * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, C, H, W) in [-1, 1] -> logits (N, K)
        return self.head(self.features(x))


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[torch.Generator]:
    """The runtime's `seed_everything` for one block, then python, numpy and torch random states as before: a
    metric's classifier is reproducible without reseeding the evaluation around it."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield seed_everything(seed)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def cpu_threads(n: int, device: torch.device) -> Iterator[None]:
    """At most n torch threads for one block on a CPU. Convolutions this small gain nothing from a second thread,
    and on a busy 2-core box two threads waiting on each other made CAS 10x slower (51 s against 4.8 s)."""
    before = torch.get_num_threads()
    if device.type == "cpu" and 0 < n < before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0  # uint8 -> [-1, 1]


def fit_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, *,
                   cfg: ClassifierConfig = ClassifierConfig(), seed: int = 0,
                   device: str | torch.device = "cpu") -> SmallCNN:
    """Train a SmallCNN on uint8 images (N, C, H, W) with int labels (N,) in [0, num_classes) for cfg.steps steps."""
    images, labels = np.asarray(images), np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need uint8 (N, C, H, W) images and N labels, got {images.dtype} {images.shape} and "
                         f"{labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    device = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    y = torch.from_numpy(labels).to(device)
    with seeded(seed, device) as gen, cpu_threads(cfg.cpu_threads, device):
        model = SmallCNN(images.shape[1], num_classes, size=images.shape[2:], width=cfg.width,
                         dropout=cfg.dropout).to(device)
        train_steps(model, len(x), cfg, gen, lambda idx: nn.functional.cross_entropy(model(_to_float(x[idx])), y[idx]))
    return model.eval()


def train_steps(model: nn.Module, n: int, cfg, gen: torch.Generator, loss_of) -> None:
    """The classifiers' loop: AdamW (cfg.lr, cfg.weight_decay) cosine-decayed over cfg.steps batches of
    cfg.batch_size row indices drawn epoch by epoch from seeded permutations of range(n); loss_of(idx) -> loss."""
    device, batch = next(model.parameters()).device, min(cfg.batch_size, n)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps))
    model.train()
    order, pos = torch.randperm(n, generator=gen), 0
    for _ in range(cfg.steps):
        if pos + batch > n:  # a new epoch: a fresh permutation, no ragged batch
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch].to(device)
        pos += batch
        loss = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


@torch.no_grad()
def predict(model: SmallCNN, images: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
    """Predicted class (N,) of uint8 images (N, C, H, W)."""
    device = next(model.parameters()).device
    model.eval()
    out = [model(_to_float(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device))).argmax(1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.int64)


def accuracy(model: SmallCNN, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[int, float]]:
    """(overall accuracy, {class: accuracy}) on labelled images."""
    labels = np.asarray(labels, dtype=np.int64)
    hit = predict(model, images) == labels
    return float(hit.mean()), {int(c): float(hit[labels == c].mean()) for c in np.unique(labels)}
