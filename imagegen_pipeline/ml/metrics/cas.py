"""Classification Accuracy Score (Ravuri & Vinyals 2019): train a classifier on generated images only, with
balanced asked-for labels, and test it on real held-out images. FID and precision/recall do not ask whether the
samples of class 3 carry what makes a 3 a 3; a classifier that learns the classes from samples alone only does
well on real images if they do. A generator that ignores its label scores about chance, one that draws each
class too narrowly (collapsed within a class) loses accuracy on the real variety it never saw.

Beside it, the same classifier (same architecture, seed and number of steps) trained on as many real training
images: `cas_ratio` = CAS / that accuracy, 1 when samples teach as much as real data.

The paper trains on as many samples as the real train split has. On a 2-core CPU that is minutes per model, too
slow for the quick protocol, so the count is `min(ctx.extra["cas_images"] (default 2000), labelled training
images in the context)`: the evaluation passes its train subset (as many images as the val reference: 1,000 in
the quick protocol, 10,000 in the paper protocol), so quick CAS is a 1,000-image CAS. Steps: `cas_steps` (300),
batch `cas_batch_size` (64), the same at every count, so the cost hardly grows with it: about 5 s on the 2-core box
at 32 px (sampling, two trainings, two passes over the held-out images). The counts used are in the output, and a
CAS only compares with one measured with the same counts. Without training images (or labels) only CAS is
reported, on `cas_images` samples. Measured on MNIST (1,000 images each side): the registered conditional DCGAN
scores 0.92 against 0.934 for real images (ratio 0.985).

Needs `ctx.sample` (set for class-conditional generators) and the labelled real held-out images.
"""

from __future__ import annotations

import numpy as np

from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric
from imagegen_pipeline.ml.small_classifier import ClassifierConfig, accuracy, fit_classifier


def classifier_config(extra: dict, prefix: str) -> ClassifierConfig:
    """The small classifier's settings, steps and batch size overridable as ctx.extra[f"{prefix}_steps"] etc."""
    base = ClassifierConfig()
    return ClassifierConfig(steps=int(extra.get(f"{prefix}_steps", base.steps)),
                            batch_size=int(extra.get(f"{prefix}_batch_size", base.batch_size)))


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
    """n labels cycling over the classes: counts differ by at most one."""
    return np.arange(n, dtype=np.int64) % num_classes


def labelled(images: np.ndarray | None, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows with a class (label >= 0), or None without images or labels."""
    if images is None or labels is None:
        return None
    labels = np.asarray(labels, dtype=np.int64)
    keep = labels >= 0
    return np.asarray(images)[keep], labels[keep]


def draw_samples(ctx: MetricContext, labels: np.ndarray, like: np.ndarray) -> np.ndarray:
    """ctx.sample(labels, ctx.seed), checked to be uint8 images shaped like the real ones."""
    try:
        fake = np.asarray(ctx.sample(labels, ctx.seed))
    except ValueError as exc:  # e.g. the real data has a class the generator was not trained on
        raise MetricUnavailable(f"ctx.sample could not draw classes 0..{labels.max()}: {str(exc)[:160]}") from None
    if fake.dtype != np.uint8 or fake.shape != (len(labels), *like.shape[1:]):
        raise MetricUnavailable(f"ctx.sample gave {fake.dtype} {fake.shape}, expected uint8 "
                                f"{(len(labels), *like.shape[1:])} like the real images")
    return fake


def require_sampler(ctx: MetricContext, what: str) -> None:
    if ctx.sample is None:
        raise MetricUnavailable(f"{what} needs a class-conditional generator to draw images for chosen labels "
                                f"(ctx.sample, set by the evaluation for conditioning='class' models only)")


@register_metric
def cas(ctx: MetricContext) -> dict:
    """Accuracy on real held-out images of a classifier trained on samples only, beside one trained on real ones."""
    require_sampler(ctx, "CAS")
    test = labelled(*ctx.require("real_images", "real_labels"))
    if test is None or len(test[1]) == 0:
        raise MetricUnavailable("CAS needs labelled real held-out images (real_labels >= 0)")
    train = labelled(ctx.train_images, ctx.train_labels)
    if train is not None and len(train[1]) == 0:
        train = None
    num_classes = int(max(test[1].max(), -1 if train is None else train[1].max())) + 1
    if num_classes < 2:
        raise MetricUnavailable("CAS needs at least 2 classes among the real labels")
    cfg = classifier_config(ctx.extra, "cas")
    asked = int(ctx.extra.get("cas_images", 2000))
    n = asked if train is None else min(asked, len(train[1]))
    fake_labels = balanced_labels(n, num_classes)
    fake = draw_samples(ctx, fake_labels, test[0])
    acc, per_class = accuracy(fit_classifier(fake, fake_labels, num_classes, cfg=cfg, seed=ctx.seed,
                                             device=ctx.device), *test)
    out = {"cas_accuracy": round(acc, 4),
           "cas_per_class": {ctx.class_name(c): round(a, 4) for c, a in per_class.items()},
           "cas_images": n, "cas_test_images": len(test[1]), "cas_steps": cfg.steps,
           "cas_batch_size": cfg.batch_size, "cas_classes": num_classes, "cas_chance": round(1 / num_classes, 4)}
    if train is not None:
        rows = np.sort(np.random.default_rng(ctx.seed).choice(len(train[1]), n, replace=False))
        real_acc, _ = accuracy(fit_classifier(train[0][rows], train[1][rows], num_classes, cfg=cfg, seed=ctx.seed,
                                              device=ctx.device), *test)
        out.update(cas_real_accuracy=round(real_acc, 4), cas_ratio=round(acc / max(real_acc, 1e-6), 4))
    return out
