"""iCT (Song & Dhariwal 2023): consistency training on the Karras grid with the doubling
curriculum, lognormal pair sampling, Pseudo-Huber over the whole example and 1/(s_{i+1}-s_i).

iLCT options (Dao et al. 2025, arXiv 2502.01441), each off by default so that the defaults are
iCT exactly: ``loss="cauchy"`` with ``c_schedule="adaptive"`` (c = exp(-1.15 ln(N - 1) - 0.85)
once the curriculum has doubled N at least once), ``diffusion_loss_weight`` (5 in iLCT) on the
``diffusion_loss_fraction`` (25%) lowest-noise pairs, and ``ot_pairing`` (minibatch optimal
transport between data and noise). iLCT's non-scaling LayerNorm is a network change, not here.

The math lives in ``cmjax.objectives.ict_schedule`` (grid, curriculum, pair draws, scalings);
this module is the objective: the loss of one step and the consistency samplers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from cmjax.errors import ConfigError
from cmjax.objectives import distances, ict_schedule
from cmjax.objectives.base import (
    ApplyFn,
    Metrics,
    Objective,
    ObjectiveContext,
    SamplerPlan,
    one_or_two_step_plan,
    option,
)
from cmjax.objectives.ot_pairing import ot_pair_noise
from cmjax.objectives.preconditioning import consistency_fn, student_teacher_outputs

WEIGHTINGS = ("ict", "uniform")
C_SCHEDULES = ("fixed", "adaptive")
TWO_STEP_SIGMA = 0.821  # CIFAR-10's two-step intermediate sigma (ImageNet 64: 1.526)


def consistency_sample(
    apply_fn: ApplyFn,
    params: Any,
    rng: jax.Array,
    shape: tuple[int, ...],
    sigmas: Sequence[float],
    *,
    sigma_min: float,
    sigma_data: float,
    noise_cond_scale: float,
    labels: jax.Array | None = None,
) -> jax.Array:
    """Song et al. 2023, Algorithm 1 for decreasing ``sigmas``: x = f(s_0 z, s_0), then for
    each later s, x <- f(x + sqrt(s^2 - smin^2) z', s). Returns (B, ...) float32."""
    keys = jax.random.split(rng, len(sigmas))
    batch = shape[0]

    def f(x, s):
        sig = jnp.full((batch,), s, jnp.float32)
        return consistency_fn(
            apply_fn,
            params,
            x,
            sig,
            labels,
            sigma_data=sigma_data,
            sigma_min=sigma_min,
            noise_cond_scale=noise_cond_scale,
        )

    x = f(sigmas[0] * jax.random.normal(keys[0], shape, jnp.float32), sigmas[0])
    for key, s in zip(keys[1:], sigmas[1:], strict=True):
        noise = math.sqrt(s**2 - sigma_min**2) * jax.random.normal(key, shape)
        x = f(x + noise, s)
    return x


class ConsistencySampling:
    """The 1-/multistep consistency sampler shared by iCT and ECT (sigma units); the class
    using it has a ``two_step_sigma`` field (``config.sampling.two_step_sigma``)."""

    two_step_sigma: float

    def _sigmas(self) -> tuple[float, float, float, float]:
        """(sigma_min, sigma_max, sigma_data, noise_cond_scale) of sampling."""
        raise NotImplementedError

    def sampler_plans(self) -> dict[str, SamplerPlan]:
        return {"1step": self.plan(1), "2step": self.plan(2)}

    def plan(
        self,
        steps: int | None = None,
        times: Sequence[float] | None = None,
        method: str | None = None,
    ) -> SamplerPlan:
        smin, smax, _, _ = self._sigmas()
        return one_or_two_step_plan(
            steps,
            times,
            method,
            name="consistency",
            first=smax,
            second=self.two_step_sigma,
            bounds=(smin, smax),
            what="sigmas",
        )

    def sample(self, apply_fn, net_params, rng, shape, plan, labels=None) -> jax.Array:
        smin, _, sd, scale = self._sigmas()
        return consistency_sample(
            apply_fn,
            net_params,
            rng,
            shape,
            plan.times,
            sigma_min=smin,
            sigma_data=sd,
            noise_cond_scale=scale,
            labels=labels,
        )


@dataclasses.dataclass(frozen=True)
class ICT(ConsistencySampling, Objective):
    """iCT consistency training; every field is a config key (docs/objectives.md, iCT).

    ``loss_c`` None (the default) is derived: 0.00054 sqrt(dim) of the data's example size.
    """

    name: ClassVar[str] = "ict"

    sigma_min: float = ict_schedule.SIGMA_MIN
    sigma_max: float = ict_schedule.SIGMA_MAX
    rho: float = ict_schedule.RHO
    sigma_data: float = ict_schedule.SIGMA_DATA
    s0: int = ict_schedule.S0
    s1: int = ict_schedule.S1
    p_mean: float = ict_schedule.P_MEAN
    p_std: float = ict_schedule.P_STD
    loss_name: str = option("pseudo_huber", key="loss")
    loss_c: float | None = None  # None: 0.00054 * sqrt(dim)
    weighting: str = "ict"
    # iLCT switches (arXiv 2502.01441); these defaults are plain iCT.
    c_schedule: str = "fixed"  # "adaptive": c = exp(-1.15 ln(N-1) - 0.85) after the 1st doubling
    diffusion_loss_weight: float = 0.0  # iLCT: 5.0
    diffusion_loss_fraction: float = 0.25  # share of the N - 1 pairs, lowest noise first
    ot_pairing: bool = False  # iLCT: True (exact minibatch OT of data and noise)
    total_steps: int = option(400_000, section="training")
    noise_cond_scale: float = option(1.0, section="model")
    two_step_sigma: float = option(TWO_STEP_SIGMA, section="sampling")

    def __post_init__(self):
        distances.get_distance(self.loss_name)
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"config.objective.weighting must be one of {WEIGHTINGS}")
        if self.c_schedule not in C_SCHEDULES:
            raise ConfigError(f"config.objective.c_schedule must be one of {C_SCHEDULES}")
        if self.diffusion_loss_weight < 0 or not 0 < self.diffusion_loss_fraction <= 1:
            raise ConfigError(
                "config.objective needs diffusion_loss_weight >= 0 and "
                "0 < diffusion_loss_fraction <= 1"
            )
        try:
            self.schedule  # noqa: B018 (validates the grid and curriculum constants)
        except ValueError as e:
            raise ConfigError(f"config.objective: {e}") from None

    @classmethod
    def build(cls, values: dict[str, Any], ctx: ObjectiveContext) -> ICT:
        if values["loss_c"] is None or values["loss_c"] <= 0:
            values = {
                **values,
                "loss_c": distances.default_pseudo_huber_c(math.prod(ctx.data_shape)),
            }
        return cls(**values)

    @property
    def schedule(self) -> ict_schedule.NoiseSchedule:
        """The Karras grid, curriculum and lognormal pair-sampling constants."""
        return ict_schedule.NoiseSchedule(
            total_steps=self.total_steps,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            rho=self.rho,
            sigma_data=self.sigma_data,
            s0=self.s0,
            s1=self.s1,
            p_mean=self.p_mean,
            p_std=self.p_std,
        )

    def loss_scale(self, n: jax.Array) -> jax.Array | float:
        """The distance's c at N(step) = ``n`` grid points: ``loss_c``, or with
        ``c_schedule="adaptive"`` iLCT's exp(-1.15 ln(N - 1) - 0.85) once N > s0 + 1."""
        if self.c_schedule == "fixed":
            return self.loss_c  # a Python float, exactly as iCT (bit-identical losses)
        doubled = n > self.schedule.s0 + 1
        return jnp.where(doubled, ict_schedule.adaptive_cauchy_c(n), jnp.float32(self.loss_c))

    def _sigmas(self):
        s = self.schedule
        return s.sigma_min, s.sigma_max, s.sigma_data, self.noise_cond_scale

    def loss(
        self,
        params: Any,
        apply_fn: ApplyFn,
        x: jax.Array,
        labels: jax.Array | None,
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, Metrics]:
        schedule = self.schedule
        k_sigma, k_noise, k_dropout = jax.random.split(rng, 3)
        idx, sigma, sigma_next = ict_schedule.sample_pair_indices(
            k_sigma, step, x.shape[0], schedule
        )
        z = jax.random.normal(k_noise, x.shape, jnp.float32)
        if self.ot_pairing:
            z = ot_pair_noise(x, z)
        if self.weighting == "ict":
            weight = ict_schedule.ict_loss_weight(sigma, sigma_next)
        else:
            weight = jnp.ones_like(sigma)
        student, teacher = student_teacher_outputs(
            apply_fn,
            params,
            x,
            z,
            sigma,
            sigma_next,
            labels,
            k_dropout,
            sigma_data=schedule.sigma_data,
            sigma_min=schedule.sigma_min,
            noise_cond_scale=self.noise_cond_scale,
        )
        n = ict_schedule.num_scales(step, schedule.total_steps, schedule.s0, schedule.s1)
        c = self.loss_scale(n)
        dist = distances.get_distance(self.loss_name)(student, teacher, c)
        metrics = {
            "distance": jnp.mean(dist),
            "num_scales": n,
            "sigma_mean": jnp.mean(sigma_next),
        }
        loss = weight * dist
        if self.c_schedule != "fixed":
            metrics["loss_c"] = c
        if self.diffusion_loss_weight > 0:
            # iLCT: (1/sigma^2 + 1/sd^2) ||f(x + sigma z, sigma) - x||^2 at the student's
            # sigma = sigma_{i+1}, on the lowest-noise pairs only.
            mask = ict_schedule.low_noise_mask(idx, n, self.diffusion_loss_fraction)
            lam = 1.0 / jnp.square(sigma_next) + 1.0 / schedule.sigma_data**2
            diffusion = lam * distances.squared_l2(student, x)
            loss = loss + self.diffusion_loss_weight * mask * diffusion
            metrics["diffusion_loss"] = jnp.sum(mask * diffusion) / jnp.maximum(jnp.sum(mask), 1)
        return loss, metrics
