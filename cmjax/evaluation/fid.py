"""Fréchet Inception Distance: activation statistics in float64 and the Fréchet distance."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import numpy as np
from scipy import linalg

from cmjax.evaluation.inception import FIDInception


class StatsError(ValueError):
    """Reference statistics are missing or malformed."""


def activation_statistics(features_NxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), covariance (D, D)) in float64, covariance with the N - 1 denominator."""
    f = np.asarray(features_NxD, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (N >= 2, D) features, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), float64.

    A near-singular product (few samples, or identical rank-deficient statistics) gets
    ``eps`` added to both diagonals before the square root, as in the reference code.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size,) * 2:
        raise ValueError(f"mismatched statistics: {mu1.shape} {s1.shape} vs {mu2.shape} {s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has imaginary part {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def load_reference_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` and ``sigma`` from an .npz (the format pytorch-fid and ADM's evaluator write)."""
    path = Path(path)
    if not path.is_file():
        raise StatsError(
            f"reference statistics {path} not found; compute them with "
            "`cmjax-fid --reference=<dataset npz> --save_stats=<out.npz>`"
        )
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise StatsError(f"{path} needs arrays 'mu' and 'sigma', found {sorted(f.files)}")
        mu, sigma = f["mu"], f["sigma"]
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise StatsError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit")
    return mu.astype(np.float64), sigma.astype(np.float64)


def make_feature_fn(variables) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 (B, H, W, 3) images -> (B, 2048) float32 pool_3 features (jitted)."""
    apply = jax.jit(FIDInception().apply)

    def features(images_uint8: np.ndarray) -> np.ndarray:
        x = np.asarray(images_uint8, np.float32) / 127.5 - 1.0
        return np.asarray(apply(variables, x))

    return features


def dataset_statistics(feature_fn, batches: Iterable[np.ndarray]):
    """Statistics of the features of an iterable of uint8 image batches."""
    feats = np.concatenate([feature_fn(b) for b in batches])
    return activation_statistics(feats)
