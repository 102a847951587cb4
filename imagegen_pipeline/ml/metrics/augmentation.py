"""Augmentation gain: do samples help a classifier when real labels are scarce? With 1% and 10% of the labelled
training images, the small classifier is trained on those real images alone and on them plus generated images
(balanced asked-for labels), with the same number of steps, and both are tested on the real held-out images. A
positive gain means the generator adds class information the few labels lack; a negative one, that its samples
mislead (wrong or off-distribution classes). CAS asks whether samples can replace real data; this asks whether
they add to it, the use people train conditional generators for.

The fractions are of the training images in the context (the evaluation's train subset: 1,000 images in the
quick protocol, 10,000 in the paper one), stratified by class with at least one image of each class. Generated
images: `ctx.extra["augmentation_images"]` (default: `cas_images`, else 2000); steps and batch size
`augmentation_steps` / `augmentation_batch_size` (the small classifier's 300 and 64). Four trainings: opt-in,
run only when named (`EvalConfig.metrics=(..., "augmentation_gain")`), never in the default set.
"""

from __future__ import annotations

import numpy as np

from imagegen_pipeline.ml.metrics.cas import balanced_labels, classifier_config, draw_samples, labelled, require_sampler
from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric
from imagegen_pipeline.ml.small_classifier import accuracy, fit_classifier

FRACTIONS = {"1%": 0.01, "10%": 0.10}


def stratified_rows(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """About `fraction` of each class's rows (at least one of each class), sorted."""
    picks = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        picks.append(rng.choice(rows, max(1, int(round(fraction * len(rows)))), replace=False))
    return np.sort(np.concatenate(picks))


@register_metric(default=False)
def augmentation_gain(ctx: MetricContext) -> dict:
    """Held-out accuracy with 1% / 10% of the real labels, real-only vs real + generated (same steps)."""
    require_sampler(ctx, "augmentation_gain")
    test = labelled(*ctx.require("real_images", "real_labels"))
    train = labelled(*ctx.require("train_images", "train_labels"))
    if len(test[1]) == 0 or len(train[1]) == 0:
        raise MetricUnavailable("augmentation_gain needs labelled real training and held-out images")
    num_classes = int(max(test[1].max(), train[1].max())) + 1
    cfg = classifier_config(ctx.extra, "augmentation")
    n_fake = int(ctx.extra.get("augmentation_images", ctx.extra.get("cas_images", 2000)))
    fake_labels = balanced_labels(n_fake, num_classes)
    fake = draw_samples(ctx, fake_labels, test[0])
    rng = np.random.default_rng(ctx.seed)
    table, gains, counts = {}, {}, {}
    for name, fraction in FRACTIONS.items():
        rows = stratified_rows(train[1], fraction, rng)
        x, y = train[0][rows], train[1][rows]
        real, _ = accuracy(fit_classifier(x, y, num_classes, cfg=cfg, seed=ctx.seed, device=ctx.device), *test)
        mixed, _ = accuracy(fit_classifier(np.concatenate([x, fake]), np.concatenate([y, fake_labels]), num_classes,
                                           cfg=cfg, seed=ctx.seed, device=ctx.device), *test)
        table[name] = {"real": round(real, 4), "real+generated": round(mixed, 4)}
        gains[name], counts[name] = round(mixed - real, 4), len(rows)
    return {"augmentation_table": table, "augmentation_gain_1pct": gains["1%"],
            "augmentation_gain_10pct": gains["10%"], "augmentation_real_images": counts,
            "augmentation_generated_images": n_fake, "augmentation_test_images": len(test[1]),
            "augmentation_steps": cfg.steps, "augmentation_batch_size": cfg.batch_size}
