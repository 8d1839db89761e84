"""Procedural 2-D toy distributions, scaled to roughly unit range, generated with jax.random."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp


def gaussian_mixture(rng: jax.Array, n: int) -> jax.Array:
    """8 Gaussians (std 0.05) on a circle of radius 0.8: (n, 2)."""
    k_mode, k_noise = jax.random.split(rng)
    angle = 2 * math.pi * jax.random.randint(k_mode, (n,), 0, 8) / 8
    centers = 0.8 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return centers + 0.05 * jax.random.normal(k_noise, (n, 2))


def checkerboard(rng: jax.Array, n: int) -> jax.Array:
    """Uniform on the dark squares of a 4x4 checkerboard over [-1, 1]^2: (n, 2)."""
    k_x, k_y, k_row = jax.random.split(rng, 3)
    x = jax.random.uniform(k_x, (n,), minval=-1.0, maxval=1.0)
    col = jnp.floor((x + 1.0) * 2.0)
    row = 2 * jax.random.randint(k_row, (n,), 0, 2) + (col.astype(jnp.int32) % 2)
    y = -1.0 + 0.5 * row + 0.5 * jax.random.uniform(k_y, (n,))
    return jnp.stack([x, y], axis=-1)


def two_moons(rng: jax.Array, n: int) -> jax.Array:
    """Two interleaved half circles with noise 0.05, scaled into [-1, 1]^2: (n, 2)."""
    k_t, k_side, k_noise = jax.random.split(rng, 3)
    t = math.pi * jax.random.uniform(k_t, (n,))
    side = jax.random.bernoulli(k_side, 0.5, (n,))
    upper = jnp.stack([jnp.cos(t), jnp.sin(t)], axis=-1)
    lower = jnp.stack([1.0 - jnp.cos(t), 0.5 - jnp.sin(t)], axis=-1)
    pts = jnp.where(side[:, None], upper, lower) - jnp.array([0.5, 0.25])
    return 0.6 * pts + 0.05 * jax.random.normal(k_noise, (n, 2))


DISTRIBUTIONS: dict[str, Callable[[jax.Array, int], jax.Array]] = {
    "gaussian_mixture": gaussian_mixture,
    "checkerboard": checkerboard,
    "two_moons": two_moons,
}


def sample_toy(name: str, rng: jax.Array, n: int) -> jax.Array:
    """n points of the named distribution, float32 (n, 2)."""
    if name not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown toy distribution {name!r}; choose one of {sorted(DISTRIBUTIONS)}"
        )
    return DISTRIBUTIONS[name](rng, n).astype(jnp.float32)


def sample_toy_at(name: str, seed: int, indices) -> jax.Array:
    """Record ``i`` of an endless toy stream: one point drawn from key fold_in(seed, i); (n, 2)."""
    if name not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown toy distribution {name!r}; choose one of {sorted(DISTRIBUTIONS)}"
        )
    return _sample_at(name, jax.random.key(seed), jnp.asarray(indices, jnp.uint32))


@functools.partial(jax.jit, static_argnums=0)
def _sample_at(name, key, indices):
    return jax.vmap(lambda i: DISTRIBUTIONS[name](jax.random.fold_in(key, i), 1)[0])(indices)
