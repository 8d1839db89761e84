"""The preconditioned network f(x, sigma) = c_skip x + c_out F(c_in x, c_noise) around any network.

With ``sigma_min`` > 0 it is the consistency function of Song et al. 2023 (f(x, sigma_min) = x
exactly); with ``sigma_min = 0`` it is EDM's denoiser D(x, sigma) (Karras et al. 2022).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from cmjax.objectives import ict_schedule as ict

ApplyFn = Callable[..., jax.Array]


def per_example(v_B: jax.Array, ndim: int) -> jax.Array:
    """A (B,) vector shaped to broadcast over examples of rank ``ndim`` (B, 1, ..., 1)."""
    return v_B.reshape((-1,) + (1,) * (ndim - 1))


def consistency_fn(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    sigma_B: jax.Array,
    labels_B: jax.Array | None = None,
    *,
    sigma_data: float = ict.SIGMA_DATA,
    sigma_min: float = ict.SIGMA_MIN,
    noise_cond_scale: float = 1.0,
    train: bool = False,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """f_theta(x, sigma) for x of shape (B, ...) and sigma of shape (B,); float32 output.

    c_skip = sd^2 / ((s - smin)^2 + sd^2), c_out = sd (s - smin) / sqrt(s^2 + sd^2),
    c_in = 1 / sqrt(s^2 + sd^2), c_noise = noise_cond_scale * ln(s) / 4. f(x, smin) = x
    exactly, whatever the network returns (c_skip = 1, c_out = 0).
    """
    if sigma_B.shape != x.shape[:1]:
        raise ValueError(f"sigma must have shape ({x.shape[0]},), got {sigma_B.shape}")
    c_skip, c_out, c_in = ict.consistency_scalings(sigma_B, sigma_data, sigma_min)
    x = x.astype(jnp.float32)
    if train and dropout_rng is None:
        raise ValueError("train=True needs a dropout_rng")
    rngs = {"dropout": dropout_rng} if train else {}
    out = apply_fn(
        {"params": params},
        per_example(c_in, x.ndim) * x,
        ict.noise_conditioning(sigma_B, noise_cond_scale),
        labels_B,
        train,
        rngs=rngs,
    )
    return per_example(c_skip, x.ndim) * x + per_example(c_out, x.ndim) * out.astype(jnp.float32)


def student_teacher_outputs(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    z: jax.Array,
    sigma_B: jax.Array,
    sigma_next_B: jax.Array,
    labels_B: jax.Array | None,
    dropout_rng: jax.Array,
    *,
    sigma_data: float = ict.SIGMA_DATA,
    sigma_min: float = ict.SIGMA_MIN,
    noise_cond_scale: float = 1.0,
    train: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """(f_theta(x + s_{i+1} z, s_{i+1}), stopgrad f_theta(x + s_i z, s_i)).

    One noise z and one dropout key serve both calls; the teacher is the current parameters
    under stop_gradient (iCT has no EMA teacher).
    """
    kw = dict(
        sigma_data=sigma_data,
        sigma_min=sigma_min,
        noise_cond_scale=noise_cond_scale,
        train=train,
        dropout_rng=dropout_rng,
    )
    student = consistency_fn(
        apply_fn, params, x + per_example(sigma_next_B, x.ndim) * z, sigma_next_B, labels_B, **kw
    )
    teacher = consistency_fn(
        apply_fn,
        jax.lax.stop_gradient(params),
        x + per_example(sigma_B, x.ndim) * z,
        sigma_B,
        labels_B,
        **kw,
    )
    return student, jax.lax.stop_gradient(teacher)
