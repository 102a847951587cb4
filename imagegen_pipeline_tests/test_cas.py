"""Issue 16.4: the Classification Accuracy Score and the opt-in augmentation metric, on toy generators drawing real
pixels: one that draws the asked-for class, one that ignores the label, one that draws the wrong class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagegen_pipeline.ml.metrics import MetricContext, MetricUnavailable, compute_metrics, list_metrics
from imagegen_pipeline.ml.small_classifier import ClassifierConfig, accuracy, fit_classifier

K, SIZE = 4, 16


def strokes(labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 (N, 1, 16, 16): class 0 a horizontal bar, 1 a vertical bar, 2 a diagonal, 3 a hollow box, each at a
    random place, length and brightness on a noisy background."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 50, (len(labels), 1, SIZE, SIZE)).astype(np.uint8)
    for k, c in enumerate(labels):
        r, col = rng.integers(1, SIZE - 8, 2)
        n, v = rng.integers(5, 8), rng.integers(150, 256)
        img = out[k, 0]
        if c == 0:
            img[r:r + 2, col:col + n] = v
        elif c == 1:
            img[r:r + n, col:col + 2] = v
        elif c == 2:
            img[r + np.arange(n), col + np.arange(n)] = v
        else:
            img[r:r + n, col:col + n] = v
            img[r + 1:r + n - 1, col + 1:col + n - 1] = rng.integers(0, 50)
    return out


def toy_context(generator: str, *, n_real: int = 400, **extra) -> MetricContext:
    """Labelled real train/held-out strokes, and ctx.sample drawing per `generator`: 'good' (the asked-for class),
    'ignores_label' (a random class), 'wrong_class' (the next class)."""
    rng = np.random.default_rng(0)
    train_labels, test_labels = rng.integers(0, K, n_real), rng.integers(0, K, 400)

    def sample(labels: np.ndarray, seed: int) -> np.ndarray:
        labels = np.asarray(labels)
        drawn = {"good": labels, "wrong_class": (labels + 1) % K,
                 "ignores_label": np.random.default_rng(seed + 7).integers(0, K, len(labels))}[generator]
        return strokes(drawn, 1000 + seed)

    return MetricContext(train_images=strokes(train_labels, 1), train_labels=train_labels,
                         real_images=strokes(test_labels, 2), real_labels=test_labels, sample=sample,
                         extra={"cas_steps": 150, **extra})


def test_small_classifier_learns_the_toy_classes_and_is_reproducible(one_thread):
    """The yardstick itself: well above chance on held-out strokes, and the same seed gives the same model."""
    rng = np.random.default_rng(3)
    y, yt = rng.integers(0, K, 300), rng.integers(0, K, 300)
    x, xt = strokes(y, 3), strokes(yt, 4)
    cfg = ClassifierConfig(steps=120)
    state = np.random.get_state()
    a = fit_classifier(x, y, K, cfg=cfg, seed=5)
    assert np.array_equal(np.random.get_state()[1], state[1])  # global numpy state untouched
    b = fit_classifier(x, y, K, cfg=cfg, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    acc, per_class = accuracy(a, xt, yt)
    assert acc > 0.85 and set(per_class) == set(range(K))


@pytest.mark.parametrize("generator, low, high", [("good", 0.85, 1.0), ("ignores_label", 0.0, 0.45),
                                                  ("wrong_class", 0.0, 0.1)])
def test_cas_is_near_real_for_a_good_generator_and_near_chance_for_a_bad_one(one_thread, generator, low, high):
    """A generator drawing the asked-for class teaches the classifier about as well as real images; one that
    ignores its label leaves it at chance (1/4), one that draws the wrong class below it."""
    out = compute_metrics(["cas"], toy_context(generator), skip_unavailable=False)
    r = out["results"]
    print(generator, {k: r[k] for k in ("cas_accuracy", "cas_real_accuracy", "cas_ratio")}, out["seconds"])
    assert low <= r["cas_accuracy"] <= high
    assert r["cas_real_accuracy"] > 0.85 and r["cas_ratio"] == pytest.approx(r["cas_accuracy"] / r["cas_real_accuracy"],
                                                                             abs=1e-3)
    assert r["cas_images"] == 400 and r["cas_steps"] == 150 and r["cas_classes"] == K and r["cas_chance"] == 0.25
    if generator == "good":
        assert r["cas_ratio"] > 0.9
    else:
        assert r["cas_ratio"] < 0.5


def test_cas_needs_a_class_sampler_and_caps_images_at_the_real_train_count():
    """No sampler (unconditional or text model): skipped with the reason; the count follows min(cas_images,
    labelled training images), and without training images CAS alone is reported."""
    ctx = toy_context("good", n_real=40, cas_images=1000, cas_steps=5)
    no_sampler = MetricContext(real_images=ctx.real_images, real_labels=ctx.real_labels)
    with pytest.raises(MetricUnavailable, match="class-conditional"):
        compute_metrics(["cas"], no_sampler, skip_unavailable=False)
    assert compute_metrics(["cas"], ctx)["results"]["cas_images"] == 40

    def too_few_classes(labels, seed):  # a generator trained on fewer classes than the data has
        raise ValueError(f"class labels must be in [0, 2), got {list(labels)}")

    refused = MetricContext(real_images=ctx.real_images, real_labels=ctx.real_labels, sample=too_few_classes)
    assert "could not draw classes 0..3" in compute_metrics(["cas"], refused)["skipped"]["cas"]
    ctx.train_images = ctx.train_labels = None
    ctx.extra["cas_images"] = 24
    r = compute_metrics(["cas"], ctx)["results"]
    assert r["cas_images"] == 24 and "cas_real_accuracy" not in r and "cas_ratio" not in r


def test_augmentation_gain_is_opt_in_and_runs_when_named(one_thread):
    """Left out of list_metrics() (what an evaluation runs by default), listed with include_opt_in, and run when
    named: with 1% of 400 labels (one per class) generated strokes of the right class lift accuracy a lot."""
    assert "augmentation_gain" not in list_metrics() and "cas" in list_metrics()
    assert "augmentation_gain" in list_metrics(include_opt_in=True)
    default = compute_metrics(list_metrics(), MetricContext())
    assert "augmentation_gain" not in default["seconds"]
    ctx = toy_context("good", augmentation_images=400, augmentation_steps=100)
    out = compute_metrics(["augmentation_gain"], ctx, skip_unavailable=False)
    r = out["results"]
    print(r["augmentation_table"], out["seconds"])
    assert set(r["augmentation_table"]) == {"1%", "10%"}
    assert set(r["augmentation_table"]["1%"]) == {"real", "real+generated"}
    assert r["augmentation_real_images"] == {"1%": K, "10%": pytest.approx(40, abs=K)}
    assert r["augmentation_gain_1pct"] > 0.2 and r["augmentation_table"]["1%"]["real+generated"] > 0.85
    assert r["augmentation_gain_10pct"] == pytest.approx(r["augmentation_table"]["10%"]["real+generated"]
                                                         - r["augmentation_table"]["10%"]["real"], abs=2e-4)


def test_evaluation_gives_class_models_a_sampler_and_train_labels(tmp_path, one_thread):
    """evaluate_generator sets ctx.sample for a class-conditional DCGAN (new seeds, the asked-for shape) and passes
    the train labels, so CAS runs end to end; an unconditional model skips it saying why."""
    from imagegen_pipeline.ml.dcgan import DCGANConfig, Generator
    from imagegen_pipeline.ml.evaluation import EvalConfig, RealSplit, class_sampler, evaluate_generator
    from imagegen_pipeline.ml.metrics.feature_cache import FeatureCache
    from imagegen_pipeline.ml.runtime import resolve_runtime

    class TinyDetector:
        detector_id = "tiny-v1"

        def features(self, images: torch.Tensor) -> np.ndarray:
            return images.reshape(len(images), -1)[:, :8].double().numpy()

    runtime = resolve_runtime("cpu")
    rng = torch.Generator().manual_seed(0)

    def split(n):
        labels = torch.arange(n) % 3
        images = torch.randint(0, 256, (n, 1, 32, 32), generator=rng, dtype=torch.uint8)
        return RealSplit(images, labels, [f"{i:064x}" for i in range(n)])

    ecfg = EvalConfig(num_samples=12, num_real=24, metrics=("cas",))
    for conditioning, classes in (("class", 3), ("none", 0)):
        cfg = DCGANConfig(resolution=32, channels=1, ngf=8, ndf=8, z_dim=8, conditioning=conditioning,
                          num_classes=classes)
        gen = Generator(cfg).eval()
        res = evaluate_generator(gen, cfg, train=split(40), val=split(30), detector=TinyDetector(),
                                 cache=FeatureCache(tmp_path), eval_cfg=ecfg, runtime=runtime)
        if conditioning == "none":
            assert class_sampler(gen, cfg, runtime, ecfg) is None and "class-conditional" in res.skipped["cas"]
            continue
        r = res.results
        assert r["cas_images"] == 24 and r["cas_classes"] == 3 and 0 <= r["cas_accuracy"] <= 1
        assert "cas_real_accuracy" in r and "cas" in res.seconds
        sample = class_sampler(gen, cfg, runtime, ecfg)
        drawn = sample(np.array([0, 1, 2, 0]), 0)
        assert drawn.shape == (4, 1, 32, 32) and drawn.dtype == np.uint8
        np.testing.assert_array_equal(drawn, sample(np.array([0, 1, 2, 0]), 0))  # seeded
        assert not np.array_equal(drawn, sample(np.array([0, 1, 2, 0]), 1))
        own = res.samples.transpose(0, 3, 1, 2)  # the evaluation's own samples: other noise seeds
        assert not any(np.array_equal(d, o) for d in drawn for o in own)
