"""Fine-tune ImageNet MobileNetV2 on a labelled image set, and measure what transfer bought.

An optional phase 1 trains a new head on the frozen backbone; phase 2 unfreezes the top blocks (all of them by
default, BatchNorm statistics included) under a one-cycle schedule. Measured on MNIST, 64 px, 2 CPU threads:
the old recipe (top 5 blocks, ImageNet BatchNorm statistics kept, lr 1e-4) reached 90.8% val accuracy; the whole
net with its statistics re-estimated reached 99.5% in 250 steps of 64. The baseline trains the same net from
random init with the same steps and schedule.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imagegen_pipeline.ml.extractor.config import ExtractorConfig
from imagegen_pipeline.ml.extractor.embed import embed_images
from imagegen_pipeline.ml.extractor.network import ExtractorNet, build_extractor, freeze_backbone, unfreeze_top
from imagegen_pipeline.ml.runtime import Runtime, seed_everything
from imagegen_pipeline.ml.shard_reader import to_float


@dataclass
class FinetuneResult:
    model: ExtractorNet  # on CPU, eval mode
    history: list[dict]  # per epoch: phase, epoch, step, train_loss (smoothed), train_acc, val_loss, val_acc, ...
    val_accuracy: float  # final accuracy on the labelled validation rows (nan if there are none)
    confusion: np.ndarray  # (K, K) int64, rows = true class, columns = predicted
    steps: int  # optimizer steps taken, all phases
    pretrained: bool  # ImageNet init (two phases) or random init (one phase)


@dataclass
class ExtractorReport:
    model: ExtractorNet  # the extractor to use downstream (fine-tuned, or ImageNet features only)
    fine_tuned: bool  # False when there were too few labelled classes to train a head
    reason: str  # why it was (not) fine-tuned, for people reading the run
    class_names: list[str]
    weights_source: str  # where the ImageNet weights came from
    config: dict
    finetune: FinetuneResult | None = None
    baseline: FinetuneResult | None = None  # from scratch, same steps (None if not asked or not fine-tuned)

    def summary(self) -> dict:
        out = {"fine_tuned": self.fine_tuned, "reason": self.reason, "num_classes": self.model.num_classes,
               "weights_source": self.weights_source}
        if self.finetune is not None:
            out.update(val_accuracy=self.finetune.val_accuracy, steps=self.finetune.steps)
        if self.baseline is not None:
            out.update(baseline_val_accuracy=self.baseline.val_accuracy,
                       transfer_gain=self.finetune.val_accuracy - self.baseline.val_accuracy)
        return out


def _labelled(images: torch.Tensor, labels: torch.Tensor, cap: int | None,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with a label (>= 0); a seeded random subset of `cap` of them when capped."""
    idx = torch.nonzero(labels >= 0).flatten()
    if cap is not None and len(idx) > cap:
        idx = idx[torch.randperm(len(idx), generator=gen)[:cap]].sort().values
    return images[idx], labels[idx]


def augment_batch(x: torch.Tensor, *, max_shift: float, max_zoom: float, gen: torch.Generator) -> torch.Tensor:
    """Random shift and zoom-in per image (border pixels repeat); no flips, which would change digits."""
    n = x.shape[0]
    scale = 1.0 - torch.rand(n, generator=gen) * max_zoom  # < 1: look at a smaller window = zoom in
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * max_shift)  # grid coords span 2 per side
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = scale, scale, shift
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _evaluate(model: ExtractorNet, images: torch.Tensor, labels: torch.Tensor, *, runtime: Runtime,
              batch_size: int) -> tuple[float, float, np.ndarray]:
    """Plain cross-entropy (no smoothing), accuracy and confusion on labelled rows."""
    k = model.num_classes
    confusion = np.zeros((k, k), dtype=np.int64)
    if len(labels) == 0:
        return math.nan, math.nan, confusion
    _, probs = embed_images(model, images, runtime=runtime, batch_size=batch_size)
    y = labels.numpy()
    pred = probs.argmax(1)
    np.add.at(confusion, (y, pred), 1)
    loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
    return loss, float((pred == y).mean()), confusion


def _unfreeze_for_finetune(model: ExtractorNet, cfg: ExtractorConfig) -> list[nn.Parameter]:
    """Phase 2's trainable parameters; with `finetune_batchnorm`, the backbone's BatchNorm learns this data's
    statistics."""
    model.backbone_bn_eval = not cfg.finetune_batchnorm
    return unfreeze_top(model, cfg.unfreeze_blocks) + list(model.head.parameters())


def finetune(train_images_uint8: torch.Tensor, train_labels: torch.Tensor, val_images_uint8: torch.Tensor,
             val_labels: torch.Tensor, cfg: ExtractorConfig, *, runtime: Runtime, num_classes: int,
             pretrained_state_dict: dict[str, torch.Tensor] | None = None,
             on_epoch: Callable[[dict], None] | None = None,
             log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Train on rows with labels >= 0: two phases from ImageNet weights, or one from scratch when None."""
    gen = seed_everything(cfg.seed)
    xtr, ytr = _labelled(torch.as_tensor(train_images_uint8), torch.as_tensor(train_labels), cfg.max_train_images, gen)
    xva, yva = _labelled(torch.as_tensor(val_images_uint8), torch.as_tensor(val_labels), cfg.max_val_images, gen)
    if len(ytr) < 2:
        raise ValueError(f"need at least 2 labelled training images, got {len(ytr)}")
    if int(ytr.max()) >= num_classes or (len(yva) and int(yva.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got max {int(ytr.max())}")
    pretrained = pretrained_state_dict is not None
    model = build_extractor(num_classes, pretrained=pretrained, weights_state_dict=pretrained_state_dict,
                            input_size=cfg.input_size, dropout=cfg.dropout)
    model = runtime.to_device(model)
    if pretrained:
        freeze_backbone(model)
        phases = [("head", cfg.head_epochs, cfg.lr_head, lambda: list(model.head.parameters())),
                  ("finetune", cfg.finetune_epochs, cfg.lr_finetune,
                   lambda: _unfreeze_for_finetune(model, cfg))]
    else:
        phases = [("scratch", cfg.head_epochs + cfg.finetune_epochs, cfg.lr_scratch, lambda: list(model.parameters()))]

    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    n, bs = len(ytr), min(cfg.batch_size, len(ytr))
    steps_per_epoch = n // bs  # the ragged last batch is dropped (a batch of 1 breaks BatchNorm); reshuffled each epoch
    history: list[dict] = []
    steps = 0
    for phase, epochs, lr, params_fn in phases:
        if epochs <= 0:
            continue
        opt = torch.optim.AdamW(params_fn(), lr=lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch),
                                                    pct_start=0.15)
        for epoch in range(epochs):
            t0 = time.perf_counter()
            model.train()  # frozen blocks stay in eval mode (ExtractorNet.train)
            perm = torch.randperm(n, generator=gen)
            loss_sum, correct = 0.0, 0
            for i in range(steps_per_epoch):
                idx = perm[i * bs:(i + 1) * bs]
                x = to_float(xtr[idx].to(runtime.device, non_blocking=True))  # (B, C, H, W) in [0, 1]
                if cfg.augment:
                    x = augment_batch(x, max_shift=cfg.max_shift, max_zoom=cfg.max_zoom, gen=gen)
                if runtime.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = ytr[idx].to(runtime.device, non_blocking=True)
                with runtime.autocast():
                    logits = model(x)  # (B, K)
                loss = criterion(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                steps += 1
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == y).sum())
            seen, train_seconds = steps_per_epoch * bs, time.perf_counter() - t0
            val_loss, val_acc, _ = _evaluate(model, xva, yva, runtime=runtime, batch_size=cfg.embed_batch_size)
            seconds = time.perf_counter() - t0
            row = {"phase": phase, "epoch": epoch + 1, "step": steps, "train_loss": loss_sum / seen,
                   "train_acc": correct / seen, "val_loss": val_loss, "val_acc": val_acc,
                   "seconds": seconds, "images_per_second": seen / train_seconds}
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if log is not None:
                log(f"[{phase} {epoch + 1}/{epochs}] train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}"
                    f" | val loss {val_loss:.3f} acc {val_acc:.3f} | {row['images_per_second']:.0f} img/s")
    _, val_acc, confusion = _evaluate(model, xva, yva, runtime=runtime, batch_size=cfg.embed_batch_size)
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    return FinetuneResult(model, history, val_acc, confusion, steps, pretrained)


def train_extractor(train_images_uint8: torch.Tensor, train_labels: torch.Tensor, val_images_uint8: torch.Tensor,
                    val_labels: torch.Tensor, cfg: ExtractorConfig, *, runtime: Runtime,
                    class_names: Sequence[str] | None = None,
                    weights_state_dict: dict[str, torch.Tensor] | None = None, weights_source: str = "given",
                    allow_download: bool = False, on_epoch: Callable[[dict], None] | None = None,
                    log: Callable[[str], None] | None = None) -> ExtractorReport:
    """Fine-tune (plus the from-scratch baseline); with < 2 labelled classes, ImageNet features as they are."""
    if weights_state_dict is None:
        from imagegen_pipeline.ml.extractor.weights import find_mobilenet_weights

        weights_state_dict, weights_source = find_mobilenet_weights(allow_download=allow_download)
    train_labels = torch.as_tensor(train_labels)
    present = torch.unique(train_labels[train_labels >= 0])
    num_classes = len(class_names) if class_names else (int(present.max()) + 1 if len(present) else 0)
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if len(present) < 2:
        model = build_extractor(0, weights_state_dict=weights_state_dict, input_size=cfg.input_size).eval()
        reason = (f"only {len(present)} labelled class(es) in the training split: "
                  "using ImageNet MobileNetV2 features without fine-tuning")
        if log is not None:
            log(reason)
        return ExtractorReport(model, False, reason, names, weights_source, cfg.to_dict())
    result = finetune(train_images_uint8, train_labels, val_images_uint8, val_labels, cfg, runtime=runtime,
                      num_classes=num_classes, pretrained_state_dict=weights_state_dict, on_epoch=on_epoch, log=log)
    baseline = None
    if cfg.train_baseline:
        baseline = finetune(train_images_uint8, train_labels, val_images_uint8, val_labels, cfg, runtime=runtime,
                            num_classes=num_classes, pretrained_state_dict=None, on_epoch=on_epoch, log=log)
    reason = f"fine-tuned on {len(present)} labelled classes for {result.steps} steps"
    return ExtractorReport(result.model, True, reason, names, weights_source, cfg.to_dict(), result, baseline)
