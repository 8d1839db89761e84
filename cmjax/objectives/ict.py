"""iCT (Song & Dhariwal 2023): consistency training on the Karras grid with the doubling
curriculum, lognormal pair sampling, Pseudo-Huber over the whole example and 1/(s_{i+1}-s_i).

iLCT options (Dao et al. 2025, arXiv 2502.01441), each off by default so that the defaults are
iCT exactly: ``loss="cauchy"`` with ``c_schedule="adaptive"`` (c = exp(-1.15 ln(N - 1) - 0.85)
once the curriculum has doubled N at least once), ``diffusion_loss_weight`` (5 in iLCT) on the
``diffusion_loss_fraction`` (25%) lowest-noise pairs, and ``ot_pairing`` (minibatch optimal
transport between data and noise). iLCT's non-scaling LayerNorm is a network change, not here.

The math lives in ``cmjax.ict`` (grid, curriculum, pair draws, scalings); this module is the
objective: the loss of one step and the consistency samplers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from cmjax import ict, losses
from cmjax.consistency import consistency_fn, student_teacher_outputs
from cmjax.errors import ConfigError
from cmjax.objectives.base import (
    ApplyFn,
    Metrics,
    Objective,
    ObjectiveContext,
    SamplerPlan,
    check_sampling_keys,
    check_times,
    read_section,
)
from cmjax.ot_pairing import ot_pair_noise

WEIGHTINGS = ("ict", "uniform")
C_SCHEDULES = ("fixed", "adaptive")
SCHEDULE_KEYS = tuple(
    f.name for f in dataclasses.fields(ict.NoiseSchedule) if f.name != "total_steps"
)


def ict_defaults() -> dict[str, Any]:
    """The iCT constants (DESIGN.md §1) as ``config.objective`` keys."""
    return dict(
        sigma_min=ict.SIGMA_MIN,
        sigma_max=ict.SIGMA_MAX,
        rho=ict.RHO,
        sigma_data=ict.SIGMA_DATA,
        s0=ict.S0,
        s1=ict.S1,
        p_mean=ict.P_MEAN,
        p_std=ict.P_STD,
        loss="pseudo_huber",
        loss_c=None,  # None: 0.00054 * sqrt(dim)
        weighting="ict",
        # iLCT switches (arXiv 2502.01441); these defaults are plain iCT.
        c_schedule="fixed",  # "adaptive": c = exp(-1.15 ln(N-1) - 0.85) after the 1st doubling
        diffusion_loss_weight=0.0,  # iLCT: 5.0
        diffusion_loss_fraction=0.25,  # share of the N - 1 pairs, lowest noise first
        ot_pairing=False,  # iLCT: True (exact minibatch OT of data and noise)
    )


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
    """The 1-/multistep consistency sampler shared by iCT and ECT (sigma units)."""

    SAMPLING_KEYS: ClassVar[frozenset[str]] = frozenset({"two_step_sigma"})

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
        if method not in (None, "consistency"):
            raise ValueError(f"consistency models sample with 'consistency', got {method!r}")
        smin, smax, _, _ = self._sigmas()
        if times is None:
            if steps not in (1, 2):
                raise ValueError(
                    f"consistency sampling takes 1 or 2 steps from the config, got {steps}; "
                    "pass explicit sigmas for more"
                )
            times = [smax] if steps == 1 else [smax, self.two_step_sigma]
        times = check_times(times, smin, smax, "sigmas")
        return SamplerPlan("consistency", times, len(times))

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
    """iCT consistency training; ``schedule`` holds the grid and curriculum constants."""

    name: ClassVar[str] = "ict"

    schedule: ict.NoiseSchedule
    loss_name: str = "pseudo_huber"
    loss_c: float = 0.0
    weighting: str = "ict"
    noise_cond_scale: float = 1.0
    two_step_sigma: float = 0.821
    c_schedule: str = "fixed"
    diffusion_loss_weight: float = 0.0
    diffusion_loss_fraction: float = 0.25
    ot_pairing: bool = False

    def __post_init__(self):
        losses.get_distance(self.loss_name)
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"config.objective.weighting must be one of {WEIGHTINGS}")
        if self.c_schedule not in C_SCHEDULES:
            raise ConfigError(f"config.objective.c_schedule must be one of {C_SCHEDULES}")
        if self.diffusion_loss_weight < 0 or not 0 < self.diffusion_loss_fraction <= 1:
            raise ConfigError(
                "config.objective needs diffusion_loss_weight >= 0 and "
                "0 < diffusion_loss_fraction <= 1"
            )

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return ict_defaults()

    @classmethod
    def from_config(cls, section: Mapping[str, Any], ctx: ObjectiveContext) -> ICT:
        check_sampling_keys(cls, ctx.sampling)
        v = read_section(section, cls.name, cls.defaults())
        loss_c = v["loss_c"]
        if loss_c is None or loss_c <= 0:
            loss_c = losses.default_pseudo_huber_c(math.prod(ctx.data_shape))
        try:
            schedule = ict.NoiseSchedule(
                total_steps=ctx.total_steps, **{k: v[k] for k in SCHEDULE_KEYS}
            )
        except ValueError as e:
            raise ConfigError(f"config.objective: {e}") from None
        return cls(
            schedule=schedule,
            loss_name=v["loss"],
            loss_c=float(loss_c),
            weighting=v["weighting"],
            noise_cond_scale=ctx.noise_cond_scale,
            two_step_sigma=float(ctx.sampling.get("two_step_sigma", 0.821)),
            c_schedule=str(v["c_schedule"]),
            diffusion_loss_weight=float(v["diffusion_loss_weight"]),
            diffusion_loss_fraction=float(v["diffusion_loss_fraction"]),
            ot_pairing=bool(v["ot_pairing"]),
        )

    def loss_scale(self, n: jax.Array) -> jax.Array | float:
        """The distance's c at N(step) = ``n`` grid points: ``loss_c``, or with
        ``c_schedule="adaptive"`` iLCT's exp(-1.15 ln(N - 1) - 0.85) once N > s0 + 1."""
        if self.c_schedule == "fixed":
            return self.loss_c  # a Python float, exactly as iCT (bit-identical losses)
        doubled = n > self.schedule.s0 + 1
        return jnp.where(doubled, ict.adaptive_cauchy_c(n), jnp.float32(self.loss_c))

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
        idx, sigma, sigma_next = ict.sample_pair_indices(k_sigma, step, x.shape[0], schedule)
        z = jax.random.normal(k_noise, x.shape, jnp.float32)
        if self.ot_pairing:
            z = ot_pair_noise(x, z)
        if self.weighting == "ict":
            weight = ict.ict_loss_weight(sigma, sigma_next)
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
        n = ict.num_scales(step, schedule.total_steps, schedule.s0, schedule.s1)
        c = self.loss_scale(n)
        dist = losses.get_distance(self.loss_name)(student, teacher, c)
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
            mask = ict.low_noise_mask(idx, n, self.diffusion_loss_fraction)
            lam = 1.0 / jnp.square(sigma_next) + 1.0 / schedule.sigma_data**2
            diffusion = lam * losses.squared_l2(student, x)
            loss = loss + self.diffusion_loss_weight * mask * diffusion
            metrics["diffusion_loss"] = jnp.sum(mask * diffusion) / jnp.maximum(jnp.sum(mask), 1)
        return loss, metrics
