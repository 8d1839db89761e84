"""MeanFlow (Geng et al. 2025, arXiv 2505.13447): a network u(z, t, h) of the *average*
velocity over [r, t], trained from scratch with the MeanFlow identity; 1-step sampling.

docs/objectives.md, MeanFlow; checked against the official JAX ``MeanFlow.forward``
(Gsunshine/meanflow) and its PyTorch CIFAR-10 code (Gsunshine/py-meanflow):

- z_t = (1 - t) x + t e, e ~ N(0, I), v = e - x (t = 0 data, t = 1 noise);
- t, r ~ logit-normal independently, (t, r) <- (max, min), then r = t on a fraction
  1 - ``ratio`` of the rows (plain flow matching there). ``equal_rows="position"``: the first
  floor(B (1 - ratio)) rows, as the official JAX code (an exact count per batch);
  ``"random"``: each row with probability 1 - ratio, as the PyTorch CIFAR-10 code;
- (u, du/dt) = jvp(u(., ., t - r) as a function of (z, t, r), tangents (v, 1, 0));
  u_tgt = sg(v - clip(t - r, 0, 1) du/dt); err = ||u - u_tgt||^2 summed over the example;
  loss = err / sg((err + norm_eps)^norm_p).

The network is called ``apply_fn(vars, z, noise_cond_scale * t, labels, train,
h=noise_cond_scale * (t - r))``: both times raw in [0, 1] by default (scale 1, as both
official codes), so it needs ``model.second_time_input=True``. Class-conditional guidance
folded into the target (the official ImageNet option) is not implemented: the target is the
unguided one above, and conditional networks get their labels unchanged.

Sampling: z_r = z_t - (t - r) u(z_t, t, t - r) along decreasing times 1 = t_0 > ... > 0;
1 step is x = e - u(e, 1, 1).
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
    one_or_two_step_plan,
    option,
)
from cmjax.objectives.preconditioning import per_example

EQUAL_ROWS = ("position", "random")
METHOD = "meanflow"


def sample_t_r(
    rng: jax.Array,
    batch: int,
    *,
    p_mean_t: float,
    p_std_t: float,
    p_mean_r: float,
    p_std_r: float,
    ratio: float,
    equal_rows: str = "position",
) -> tuple[jax.Array, jax.Array]:
    """(t, r), each (B,) float32 in (0, 1) with t >= r; r = t on a fraction 1 - ratio of rows.

    "position": exactly floor(B (1 - ratio)) rows, the first ones; "random": each row
    independently with probability 1 - ratio.
    """
    k_t, k_r, k_mask = jax.random.split(rng, 3)
    t = jax.nn.sigmoid(p_mean_t + p_std_t * jax.random.normal(k_t, (batch,), jnp.float32))
    r = jax.nn.sigmoid(p_mean_r + p_std_r * jax.random.normal(k_r, (batch,), jnp.float32))
    t, r = jnp.maximum(t, r), jnp.minimum(t, r)
    if equal_rows == "position":
        equal = jnp.arange(batch) < int(batch * (1.0 - ratio) + 1e-9)
    elif equal_rows == "random":
        equal = jax.random.uniform(k_mask, (batch,)) < 1.0 - ratio
    else:
        raise ValueError(f"equal_rows must be one of {EQUAL_ROWS}, got {equal_rows!r}")
    return t, jnp.where(equal, t, r)


def uniform_times(steps: int) -> tuple[float, ...]:
    """N uniform sampling times 1, 1 - 1/N, ..., 1/N (the last step goes to 0)."""
    if steps < 1:
        raise ValueError(f"MeanFlow sampling needs >= 1 step, got {steps}")
    return tuple(1.0 - i / steps for i in range(steps))


@dataclasses.dataclass(frozen=True)
class MeanFlow(Objective):
    """MeanFlow training and its few-step sampler: the CIFAR-10 constants (paper Table 1 /
    py-meanflow ``cifar10_v0.sh``)."""

    name: ClassVar[str] = "meanflow"

    p_mean_t: float = -2.0  # t ~ sigmoid(N(p_mean_t, p_std_t^2))
    p_std_t: float = 2.0
    p_mean_r: float = -2.0  # r ~ sigmoid(N(p_mean_r, p_std_r^2)), before (max, min)
    p_std_r: float = 2.0
    ratio: float = 0.75  # fraction of rows with r != t (ImageNet: 0.25)
    equal_rows: str = "position"  # which rows get r = t: "position" (JAX) or "random"
    norm_p: float = 0.75  # adaptive weight power p (ImageNet: 1.0)
    norm_eps: float = 1e-3  # adaptive weight constant c (ImageNet: 0.01)
    noise_cond_scale: float = option(1.0, section="model")
    two_step_time: float = option(0.5, section="sampling")

    def __post_init__(self):
        if self.equal_rows not in EQUAL_ROWS:
            raise ConfigError(
                f"config.objective.equal_rows must be one of {EQUAL_ROWS}, got {self.equal_rows!r}"
            )
        if not 0.0 <= self.ratio <= 1.0:
            raise ConfigError(f"config.objective.ratio must lie in [0, 1], got {self.ratio}")
        if self.p_std_t <= 0 or self.p_std_r <= 0 or self.norm_eps <= 0 or self.norm_p < 0:
            raise ConfigError("MeanFlow needs p_std_t, p_std_r, norm_eps > 0 and norm_p >= 0")
        if not 0.0 < self.two_step_time < 1.0:
            raise ConfigError(
                f"config.sampling.two_step_time must lie in (0, 1), got {self.two_step_time}"
            )

    # -- the network as an average velocity --------------------------------------------------
    def average_velocity(
        self,
        apply_fn: ApplyFn,
        params: Any,
        z: jax.Array,
        t_B: jax.Array,
        r_B: jax.Array,
        labels: jax.Array | None = None,
        train: bool = False,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """u(z, t, h = t - r): (B, ...) for z (B, ...) and t, r (B,) in [0, 1]; float32 (float64
        for float64 inputs and parameters)."""
        if train and dropout_rng is None:
            raise ValueError("train=True needs a dropout_rng")
        rngs = {"dropout": dropout_rng} if train else {}
        scale = self.noise_cond_scale
        out = apply_fn(
            {"params": params},
            z,
            scale * t_B,
            labels,
            train,
            h=scale * (t_B - r_B),
            rngs=rngs,
        )
        return out.astype(jnp.promote_types(out.dtype, jnp.float32))

    # -- training ----------------------------------------------------------------------------
    def draw_t_r(self, rng: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
        """This objective's (t, r) draw, see :func:`sample_t_r`."""
        return sample_t_r(
            rng,
            batch,
            p_mean_t=self.p_mean_t,
            p_std_t=self.p_std_t,
            p_mean_r=self.p_mean_r,
            p_std_r=self.p_std_r,
            ratio=self.ratio,
            equal_rows=self.equal_rows,
        )

    def target_and_output(
        self,
        params: Any,
        apply_fn: ApplyFn,
        x: jax.Array,
        e: jax.Array,
        t: jax.Array,
        r: jax.Array,
        labels: jax.Array | None,
        dropout_rng: jax.Array | None,
        train: bool = True,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(u, sg(u_tgt), v) for data x, noise e (B, ...) and times t >= r (B,), float32.

        One dropout key serves the primal and the tangent pass (one ``jax.jvp``).
        """
        tb = per_example(t, x.ndim)
        z = (1.0 - tb) * x + tb * e
        v = e - x

        def u_fn(z_, t_, r_):
            return self.average_velocity(apply_fn, params, z_, t_, r_, labels, train, dropout_rng)

        u, dudt = jax.jvp(u_fn, (z, t, r), (v, jnp.ones_like(t), jnp.zeros_like(r)))
        u_tgt = v - per_example(jnp.clip(t - r, 0.0, 1.0), x.ndim) * dudt
        return u, jax.lax.stop_gradient(u_tgt), v

    def adaptive_loss(self, err_B: jax.Array) -> jax.Array:
        """err / sg((err + c)^p), (B,) float32."""
        weight = jax.lax.stop_gradient((err_B + self.norm_eps) ** self.norm_p)
        return err_B / weight

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
        x = x.astype(jnp.float32)
        batch = x.shape[0]
        k_tr, k_noise, k_dropout = jax.random.split(rng, 3)
        t, r = self.draw_t_r(k_tr, batch)
        e = jax.random.normal(k_noise, x.shape, jnp.float32)
        u, u_tgt, v = self.target_and_output(params, apply_fn, x, e, t, r, labels, k_dropout)
        err = jnp.sum(jnp.square(u - u_tgt).reshape(batch, -1), axis=1)
        v_err = jnp.sum(jnp.square(jax.lax.stop_gradient(u) - v).reshape(batch, -1), axis=1)
        metrics = {"meanflow_err": jnp.mean(err), "v_err": jnp.mean(v_err)}
        return self.adaptive_loss(err), metrics

    # -- sampling ----------------------------------------------------------------------------
    def sampler_plans(self) -> dict[str, SamplerPlan]:
        return {"1step": self.plan(1), "2step": self.plan(2)}

    def plan(
        self,
        steps: int | None = None,
        times: Sequence[float] | None = None,
        method: str | None = None,
    ) -> SamplerPlan:
        """1 step: t = (1,); 2 steps: (1, ``two_step_time``); N steps: N uniform times."""
        return one_or_two_step_plan(
            steps,
            times,
            method,
            name=METHOD,
            first=1.0,
            second=self.two_step_time,
            bounds=(0.0, 1.0),
            what="times",
            more=uniform_times,
        )

    def sample(self, apply_fn, net_params, rng, shape, plan, labels=None) -> jax.Array:
        """z_0 from e ~ N(0, I) by z <- z - (t - r) u(z, t, t - r) over ``plan.times`` then 0."""
        batch = shape[0]
        z = jax.random.normal(rng, shape, jnp.float32)
        times = (*plan.times, 0.0)
        for t, r in zip(times[:-1], times[1:], strict=True):
            t_B = jnp.full((batch,), t, jnp.float32)
            r_B = jnp.full((batch,), r, jnp.float32)
            z = z - (t - r) * self.average_velocity(apply_fn, net_params, z, t_B, r_B, labels)
        return z
