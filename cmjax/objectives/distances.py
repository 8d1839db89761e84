"""Per-example distances d(a, b) for consistency training.

Every distance takes a, b of shape (B, ...) and returns (B,) float32, reducing over the whole
example (all non-batch axes at once), never element by element.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

PSEUDO_HUBER_C_PER_SQRT_DIM = 0.00054


def default_pseudo_huber_c(dim: int) -> float:
    """iCT's c = 0.00054 sqrt(dim): 0.0299 for 32x32x3, 0.0599 for 64x64x3."""
    return PSEUDO_HUBER_C_PER_SQRT_DIM * math.sqrt(dim)


def _squared_norm(a: jax.Array, b: jax.Array) -> jax.Array:
    if a.shape != b.shape:
        raise ValueError(f"distance needs equal shapes, got {a.shape} and {b.shape}")
    diff = (a - b).astype(jnp.float32)
    return jnp.sum(jnp.square(diff).reshape(diff.shape[0], -1), axis=1)


def pseudo_huber(a: jax.Array, b: jax.Array, c: float) -> jax.Array:
    """sqrt(||a - b||^2 + c^2) - c over the whole example, shape (B,)."""
    return jnp.sqrt(_squared_norm(a, b) + c**2) - c


def cauchy(a: jax.Array, b: jax.Array, c: float) -> jax.Array:
    """log(1 + ||a - b||^2 / (2 c^2)) (iLCT's Cauchy loss), shape (B,)."""
    return jnp.log1p(_squared_norm(a, b) / (2.0 * c**2))


def squared_l2(a: jax.Array, b: jax.Array, c: float | None = None) -> jax.Array:
    """||a - b||^2, shape (B,); ``c`` is unused."""
    del c
    return _squared_norm(a, b)


def l2(a: jax.Array, b: jax.Array, c: float | None = None) -> jax.Array:
    """||a - b||, shape (B,); ``c`` is unused. The gradient at a == b is defined as 0."""
    del c
    sq = _squared_norm(a, b)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)


DISTANCES: dict[str, Callable[..., jax.Array]] = {
    "pseudo_huber": pseudo_huber,
    "cauchy": cauchy,
    "squared_l2": squared_l2,
    "l2": l2,
}


def mean_l2(a: jax.Array, b: jax.Array, c: float | None = None) -> jax.Array:
    """Per-example mean of squared differences (the CD codes' "l2"), (B,)."""
    del c
    return jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=1)


def mean_l1(a: jax.Array, b: jax.Array, c: float | None = None) -> jax.Array:
    """Per-example mean of absolute differences (the CD codes' "l1"), (B,)."""
    del c
    return jnp.mean(jnp.abs(a - b).reshape(a.shape[0], -1), axis=1)


def get_distance(name: str) -> Callable[..., jax.Array]:
    """Look a distance up by its config name."""
    try:
        return DISTANCES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(DISTANCES)}") from None
