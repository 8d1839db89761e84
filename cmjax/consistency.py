"""The consistency function f(x, sigma) = c_skip x + c_out F(c_in x, c_noise) around any network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from cmjax import ict

ApplyFn = Callable[..., jax.Array]


def _per_example(v_B: jax.Array, ndim: int) -> jax.Array:
    return v_B.reshape((-1,) + (1,) * (ndim - 1))


def consistency_fn(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    sigma_B: jax.Array,
    labels_B: jax.Array | None = None,
    *,
    schedule: ict.NoiseSchedule,
    noise_cond_scale: float = 1.0,
    train: bool = False,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """f_theta(x, sigma) for x of shape (B, ...) and sigma of shape (B,); float32 output.

    f(x, sigma_min) = x exactly, whatever the network returns (c_skip = 1, c_out = 0).
    """
    if sigma_B.shape != x.shape[:1]:
        raise ValueError(f"sigma must have shape ({x.shape[0]},), got {sigma_B.shape}")
    c_skip, c_out, c_in = ict.consistency_scalings(sigma_B, schedule.sigma_data, schedule.sigma_min)
    x = x.astype(jnp.float32)
    rngs = {"dropout": dropout_rng} if train else {}
    if train and dropout_rng is None:
        raise ValueError("train=True needs a dropout_rng")
    out = apply_fn(
        {"params": params},
        _per_example(c_in, x.ndim) * x,
        ict.noise_conditioning(sigma_B, noise_cond_scale),
        labels_B,
        train,
        rngs=rngs,
    )
    return _per_example(c_skip, x.ndim) * x + _per_example(c_out, x.ndim) * out.astype(jnp.float32)


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
    schedule: ict.NoiseSchedule,
    noise_cond_scale: float = 1.0,
    train: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """(f_theta(x + s_{i+1} z, s_{i+1}), stopgrad f_theta(x + s_i z, s_i)).

    One noise z and one dropout key serve both calls; the teacher is the current parameters
    under stop_gradient (iCT has no EMA teacher).
    """
    kw = dict(
        schedule=schedule, noise_cond_scale=noise_cond_scale, train=train, dropout_rng=dropout_rng
    )
    student = consistency_fn(
        apply_fn, params, x + _per_example(sigma_next_B, x.ndim) * z, sigma_next_B, labels_B, **kw
    )
    teacher = consistency_fn(
        apply_fn,
        jax.lax.stop_gradient(params),
        x + _per_example(sigma_B, x.ndim) * z,
        sigma_B,
        labels_B,
        **kw,
    )
    return student, jax.lax.stop_gradient(teacher)
