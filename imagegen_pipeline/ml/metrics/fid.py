"""Fréchet Inception Distance (Heusel et al. 2017) between two Gaussians fitted to detector features.

FID = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). The trace of the matrix square root comes from two
symmetric eigendecompositions in float64 (torch, on the chosen device): tr((S1 S2)^(1/2)) =
sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), a PSD matrix, so tiny negative eigenvalues from rounding are clipped
instead of turning the result complex (what `scipy.linalg.sqrtm` does on near-singular covariances,
i.e. fewer images than dimensions).
"""

from __future__ import annotations

import numpy as np
import torch

from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric


def _f64(x: np.ndarray | torch.Tensor, device: str | torch.device) -> torch.Tensor:
    return torch.as_tensor(x).to(device=device, dtype=torch.float64)


def feature_stats(features: np.ndarray, *, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> mean (D,) and unbiased covariance (D, D), float64 (computed on `device`)."""
    if np.ndim(features) != 2 or len(features) < 2:
        raise MetricUnavailable(f"FID needs at least 2 feature vectors (N, D), got shape {np.shape(features)}")
    x = _f64(features, device)
    mu = x.mean(dim=0)  # (D,)
    xc = x - mu
    sigma = xc.T @ xc / (len(x) - 1)  # (D, D)
    return mu.cpu().numpy(), sigma.cpu().numpy()


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, *, device: str | torch.device = "cpu") -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2."""
    s1, s2 = _f64(sigma1, device), _f64(sigma2, device)
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp(min=0.0).sqrt()) @ v.T  # S1^(1/2)
    m = root1 @ s2 @ root1
    return float(torch.linalg.eigvalsh((m + m.T) / 2.0).clamp(min=0.0).sqrt().sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *,
                     device: str | torch.device = "cpu") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    tr = np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2, device=device)
    return float(max(diff @ diff + tr, 0.0))


def trace_sqrt_product_from_features(features_a: np.ndarray, features_b: np.ndarray, *,
                                     device: str | torch.device = "cpu") -> float:
    """tr((S1 S2)^(1/2)) from the features themselves, exact: with A, B the centred features scaled by
    1/sqrt(n-1), S1 S2 = A'A B'B shares its non-zero eigenvalues with (A B')(A B')', so the trace is the
    nuclear norm of the (n_a, n_b) matrix A B'. For n < D that replaces two D x D eigendecompositions
    (seconds each on a small CPU) with one min(n_a, n_b)-sized one."""
    a, b = _f64(features_a, device), _f64(features_b, device)
    a = (a - a.mean(dim=0)) / np.sqrt(len(a) - 1)  # (n_a, D)
    b = (b - b.mean(dim=0)) / np.sqrt(len(b) - 1)  # (n_b, D)
    m = a @ b.T  # (n_a, n_b)
    gram = m.T @ m if m.shape[1] <= m.shape[0] else m @ m.T  # (k, k), k = min(n_a, n_b)
    return float(torch.linalg.eigvalsh((gram + gram.T) / 2.0).clamp(min=0.0).sqrt().sum())


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray, *, device: str | torch.device = "cpu") -> float:
    """FID between two (N, D) feature sets; the float64 linear algebra runs on `device`. With fewer images
    than dimensions on one side the trace term comes from the features (same value, far cheaper)."""
    if min(len(features_a), len(features_b)) >= np.shape(features_a)[1]:
        return frechet_distance(*feature_stats(features_a, device=device), *feature_stats(features_b, device=device),
                                device=device)
    for f in (features_a, features_b):
        if np.ndim(f) != 2 or len(f) < 2:
            raise MetricUnavailable(f"FID needs at least 2 feature vectors (N, D), got shape {np.shape(f)}")
    a, b = _f64(features_a, device), _f64(features_b, device)
    diff = a.mean(dim=0) - b.mean(dim=0)
    trace_cov = sum(float((x - x.mean(dim=0)).pow(2).sum()) / (len(x) - 1) for x in (a, b))  # tr(S1) + tr(S2)
    tr = trace_cov - 2.0 * trace_sqrt_product_from_features(features_a, features_b, device=device)
    return float(max(float(diff @ diff) + tr, 0.0))


def real_reference_stats(ctx: MetricContext) -> tuple[np.ndarray, np.ndarray]:
    """The cached (mu, sigma) if the context has them, else computed from real_features."""
    if ctx.real_stats is not None:
        return ctx.real_stats
    (real,) = ctx.require("real_features")
    return feature_stats(real, device=ctx.device)


def _fid_to_reference(ctx: MetricContext, fake: np.ndarray) -> float:
    if ctx.real_features is not None:
        return fid_from_features(ctx.real_features, fake, device=ctx.device)
    return frechet_distance(*real_reference_stats(ctx), *feature_stats(fake, device=ctx.device), device=ctx.device)


@register_metric
def fid(ctx: MetricContext) -> dict:
    """FID of generated vs reference images (standard Inception features), and `fid_std`: its spread over
    bootstrap resamples of the generated set. Candidate and champion share the reference, so the sampling noise
    that can fake an improvement is the generated side's; promotion asks for a gain beyond it."""
    (fake,) = ctx.require("fake_features")
    out = {"fid": _fid_to_reference(ctx, fake)}
    if ctx.fid_bootstrap >= 2:
        rng = np.random.default_rng(ctx.seed)
        draws = [_fid_to_reference(ctx, fake[rng.integers(0, len(fake), len(fake))]) for _ in range(ctx.fid_bootstrap)]
        out["fid_std"] = float(np.std(draws, ddof=1))
    return out
