"""EDM diffusion (Karras et al. 2022): the denoising objective with EDM preconditioning and
lognormal sigma, and EDM's deterministic Heun sampler on the Karras grid.

docs/objectives.md, EDM. D(x, s) = c_skip x + c_out F(c_in x, c_noise) with no sigma_min offset;
loss per example lambda(s) ||D(x0 + s n, s) - x0||^2 summed over the example (as EDM's
training loop sums it), lambda = (s^2 + sd^2) / (s sd)^2, ln s ~ N(-1.2, 1.2^2). This is
the teacher and initializer of ECT / sCT / sCD, and a baseline in its own right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from cmjax.errors import ConfigError
from cmjax.objectives.base import (
    ApplyFn,
    Metrics,
    Objective,
    SamplerPlan,
    check_times,
    option,
)
from cmjax.objectives.preconditioning import consistency_fn, per_example

SOLVERS = ("heun", "euler")


def karras_sampling_grid(n: int, sigma_min: float, sigma_max: float, rho: float) -> tuple:
    """EDM's decreasing sampler grid t_0 = sigma_max > ... > t_{n-1} = sigma_min (float64)."""
    if n < 1:
        raise ValueError(f"the sampler needs >= 1 step, got {n}")
    if n == 1:
        return (float(sigma_max),)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return tuple(float((hi + i / (n - 1) * (lo - hi)) ** rho) for i in range(n))


def edm_loss_weight(sigma: jax.Array, sigma_data: float) -> jax.Array:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


@dataclasses.dataclass(frozen=True)
class EDM(Objective):
    """EDM denoising (the CIFAR-10 / ImageNet 64 "EDM" constants); ``solver``/``num_steps``
    (``config.sampling``) define the default sampler (Heun, 18 steps)."""

    name: ClassVar[str] = "edm"

    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002  # sampler grid
    sigma_max: float = 80.0
    rho: float = 7.0
    noise_cond_scale: float = option(1.0, section="model")
    num_steps: int = option(18, section="sampling")
    solver: str = option("heun", section="sampling")

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ConfigError(
                f"config.sampling.solver must be one of {SOLVERS}, got {self.solver!r}"
            )
        if not 0 < self.sigma_min < self.sigma_max or self.p_std <= 0 or self.sigma_data <= 0:
            raise ConfigError("EDM needs 0 < sigma_min < sigma_max, p_std > 0, sigma_data > 0")
        if self.num_steps < 1:
            raise ConfigError(f"config.sampling.num_steps must be >= 1, got {self.num_steps}")

    def denoise(self, apply_fn, params, x, sigma_B, labels=None, train=False, dropout_rng=None):
        """D(x, sigma): (B, ...) float32."""
        return consistency_fn(
            apply_fn,
            params,
            x,
            sigma_B,
            labels,
            sigma_data=self.sigma_data,
            sigma_min=0.0,
            noise_cond_scale=self.noise_cond_scale,
            train=train,
            dropout_rng=dropout_rng,
        )

    def loss(
        self,
        params: Any,
        apply_fn: ApplyFn,
        x: jax.Array,
        labels: jax.Array | None,
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, Metrics]:
        del step
        k_sigma, k_noise, k_dropout = jax.random.split(rng, 3)
        log_sigma = self.p_mean + self.p_std * jax.random.normal(k_sigma, x.shape[:1])
        sigma = jnp.exp(log_sigma)
        noise = jax.random.normal(k_noise, x.shape, jnp.float32)
        x_noisy = x + per_example(sigma, x.ndim) * noise
        d = self.denoise(apply_fn, params, x_noisy, sigma, labels, True, k_dropout)
        sq = jnp.sum(jnp.square(d - x).reshape(x.shape[0], -1), axis=1)
        weight = edm_loss_weight(sigma, self.sigma_data)
        metrics = {"denoise_mse": jnp.mean(sq) / (x.size // x.shape[0])}
        return weight * sq, metrics

    def sampler_plans(self) -> dict[str, SamplerPlan]:
        return {f"{self.solver}{self.num_steps}": self.plan(self.num_steps)}

    def plan(
        self,
        steps: int | None = None,
        times: Sequence[float] | None = None,
        method: str | None = None,
    ) -> SamplerPlan:
        method = method or self.solver
        if method not in SOLVERS:
            raise ValueError(f"EDM samplers are {SOLVERS}, got {method!r}")
        if times is None:
            steps = self.num_steps if steps is None else steps
            times = karras_sampling_grid(steps, self.sigma_min, self.sigma_max, self.rho)
        times = check_times(times, 0.0, self.sigma_max, "sigmas")
        nfe = 2 * len(times) - 1 if method == "heun" else len(times)
        return SamplerPlan(method, times, nfe)

    def sample(self, apply_fn, net_params, rng, shape, plan, labels=None) -> jax.Array:
        """EDM Algorithm 1 (deterministic): Euler steps along dx/ds = (x - D(x, s)) / s to 0,
        with Heun's correction on every step but the last (2N - 1 NFE for N sigmas)."""
        batch = shape[0]

        def drift(x, s):
            d = self.denoise(apply_fn, net_params, x, jnp.full((batch,), s, jnp.float32), labels)
            return (x - d) / s

        times = (*plan.times, 0.0)
        x = times[0] * jax.random.normal(rng, shape, jnp.float32)
        for s, s_next in zip(times[:-1], times[1:], strict=True):
            d = drift(x, s)
            x_next = x + (s_next - s) * d
            if plan.method == "heun" and s_next > 0:
                x_next = x + (s_next - s) * 0.5 * (d + drift(x_next, s_next))
            x = x_next
        return x
