"""One-step and multistep consistency sampling (Song et al. 2023, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from cmjax import ict
from cmjax.consistency import ApplyFn, consistency_fn


def sample(
    apply_fn: ApplyFn,
    params: Any,
    rng: jax.Array,
    shape: tuple[int, ...],
    sigmas: Sequence[float],
    *,
    schedule: ict.NoiseSchedule,
    noise_cond_scale: float = 1.0,
    labels: jax.Array | None = None,
) -> jax.Array:
    """Samples of ``shape`` (B, ...): x = f(sigma_0 z, sigma_0), then for each later sigma s,
    x <- f(x + sqrt(s^2 - sigma_min^2) z', s). ``sigmas`` starts at sigma_max and decreases.
    """
    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(b >= a for a, b in zip(sigmas, sigmas[1:], strict=False)):
        raise ValueError(f"sigmas must be a non-empty strictly decreasing list, got {sigmas}")
    if sigmas[-1] <= schedule.sigma_min or sigmas[0] > schedule.sigma_max:
        raise ValueError(f"sigmas must lie in (sigma_min, sigma_max], got {sigmas}")
    keys = jax.random.split(rng, len(sigmas))
    batch = shape[0]

    def f(x, s):
        return consistency_fn(
            apply_fn,
            params,
            x,
            jnp.full((batch,), s, jnp.float32),
            labels,
            schedule=schedule,
            noise_cond_scale=noise_cond_scale,
        )

    x = f(sigmas[0] * jax.random.normal(keys[0], shape, jnp.float32), sigmas[0])
    for key, s in zip(keys[1:], sigmas[1:], strict=True):
        noise = jnp.sqrt(s**2 - schedule.sigma_min**2) * jax.random.normal(key, shape)
        x = f(x + noise, s)
    return x


def make_sampler(
    apply_fn: ApplyFn,
    schedule: ict.NoiseSchedule,
    shape: tuple[int, ...],
    sigmas: Sequence[float],
    *,
    noise_cond_scale: float = 1.0,
    mesh=None,
):
    """A jitted ``draw(params, rng, labels=None) -> (B, ...)`` for a static sample ``shape``.

    With a ``mesh`` the samples (and labels) are sharded over its batch axes; the noise is
    the same as on one device (threefry is partitionable), so the samples are too.
    """
    from cmjax import parallel  # local import: parallel imports train_state

    out_shardings = None if mesh is None else parallel.batch_sharding(mesh, len(shape))

    def draw(params, rng, labels=None):
        return sample(
            apply_fn,
            params,
            rng,
            shape,
            sigmas,
            schedule=schedule,
            noise_cond_scale=noise_cond_scale,
            labels=labels,
        )

    return jax.jit(draw, out_shardings=out_shardings)


def sampler_sigmas(config: Mapping[str, Any]) -> dict[str, list[float]]:
    """A config's 1- and 2-step sigmas: {"1step": [sigma_max], "2step": [sigma_max, s]}.

    ``s`` is ``config.sampling.two_step_sigma`` (the paper's 0.821 on CIFAR-10, 1.526 on
    ImageNet 64), 0.821 when the config has no sampling section.
    """
    sigma_max = float(config["ict"]["sigma_max"])
    two = float(config["sampling"]["two_step_sigma"]) if "sampling" in config else 0.821
    return {"1step": [sigma_max], "2step": [sigma_max, two]}
