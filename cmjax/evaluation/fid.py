"""Fréchet Inception Distance: activation statistics in float64 and the Fréchet distance."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import numpy as np

from cmjax.errors import StatsError
from cmjax.evaluation.inception import FIDInception


def activation_statistics(features_NxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), covariance (D, D)) in float64, covariance with the N - 1 denominator."""
    f = np.asarray(features_NxD, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (N >= 2, D) features, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), float64.

    The trace of the matrix square root is computed from symmetric eigenvalue problems, not
    a general ``sqrtm``: with A = S1^(1/2) (from ``eigh``), S1 S2 = A (A S2 A) A^-1 has the
    eigenvalues of the symmetric positive semi-definite A S2 A, so tr((S1 S2)^(1/2)) is the
    sum of their square roots (rounding negatives of order 1e-12 up to 0). Equal to the
    reference code's ``scipy.linalg.sqrtm`` value on full-rank statistics (tests pin it to
    1e-6), exact on the rank-deficient covariances of few samples where ``sqrtm`` fails and
    the reference retries with 1e-6 added to both diagonals, and about 3x faster at D = 2048.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size,) * 2:
        raise ValueError(f"mismatched statistics: {mu1.shape} {s1.shape} vs {mu2.shape} {s2.shape}")
    diff = mu1 - mu2
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    keep = w > w.max(initial=0.0) * 1e-12  # the numerical range of S1
    a = v[:, keep] * np.sqrt(w[keep])  # S1 = a a^T, (D, rank)
    inner = a.T @ s2 @ a  # (rank, rank): its eigenvalues are the non-zero ones of S1 S2
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


def load_reference_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` and ``sigma`` from an .npz (the format pytorch-fid and ADM's evaluator write)."""
    path = Path(path)
    if not path.is_file():
        raise StatsError(
            f"reference statistics {path} not found; compute them with "
            "`cmjax-fid --reference=<dataset npz> --save_stats=<out.npz>`"
        )
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise StatsError(f"reference statistics {path} are not a readable .npz") from e
    with f:
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
