"""Sliced 2-Wasserstein distance between two equally sized point sets."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sliced_wasserstein(
    x_NxD: jax.Array, y_NxD: jax.Array, rng: jax.Array, num_projections: int = 512
) -> jax.Array:
    """sqrt(E_theta W_2^2(theta·x, theta·y)) over random unit directions theta; a scalar.

    Both sets must hold the same number of points, so 1-D W_2 is the distance of sorted values.
    """
    if x_NxD.shape != y_NxD.shape or x_NxD.ndim != 2:
        raise ValueError(f"need two (N, D) sets of equal shape, got {x_NxD.shape}, {y_NxD.shape}")
    theta_PxD = jax.random.normal(rng, (num_projections, x_NxD.shape[1]))
    theta_PxD = theta_PxD / jnp.linalg.norm(theta_PxD, axis=1, keepdims=True)
    px = jnp.sort(x_NxD.astype(jnp.float32) @ theta_PxD.T, axis=0)
    py = jnp.sort(y_NxD.astype(jnp.float32) @ theta_PxD.T, axis=0)
    return jnp.sqrt(jnp.mean(jnp.square(px - py)))
