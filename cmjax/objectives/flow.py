"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023), and its training-free
conversion into a TrigFlow velocity (Chen et al. 2025, SANA-Sprint; docs/objectives.md, Flow
matching), so that sCD distills a flow teacher unchanged.

x_t = (1 - t) x0 + t e, e ~ N(0, I), t in [0, 1] (t = 1 noise); the network predicts the
velocity v = e - x0 from F(x_t, c_noise = noise_cond_scale * t). Training times are
logit-normal, t = sigmoid(N(p_mean, p_std^2)) (SD3 / SANA: 0, 1). Loss (1/D) ||F - v||^2.
Sampler: Euler steps along dx/dt = v from t = 1 (x = e) to 0 over N uniform times.
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
from cmjax.objectives.preconditioning import per_example


def flow_to_trigflow(
    x_theta: jax.Array, theta_B: jax.Array, sigma_data: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x_flow, t (B,), scale lambda (B,)): the flow state with the same signal and noise as
    the TrigFlow state x_theta = cos theta x0 + sin theta sd e, namely
    x_flow = lambda x_theta = (1 - t) x0 + t e with lambda = 1 / (cos theta + sd sin theta),
    t = sd sin theta lambda."""
    cos, sin = jnp.cos(theta_B), jnp.sin(theta_B)
    lam = 1.0 / (cos + sigma_data * sin)
    t = sigma_data * sin * lam
    return per_example(lam, x_theta.ndim) * x_theta, t, lam


def trigflow_velocity_from_flow(
    v: jax.Array, x_flow: jax.Array, t_B: jax.Array, theta_B: jax.Array, sigma_data: float
) -> jax.Array:
    """The TrigFlow velocity dx_theta/dtheta = -sin theta x0 + cos theta sd e implied by a flow
    velocity v ~ E[e - x0 | x_flow] at the corresponding flow state (x0 = x_flow - t v,
    e = x_flow + (1 - t) v). For data scaled to unit variance (sd = 1 here, the flow model on
    x0 / sd) this is SANA-Sprint's F = ((1 - 2t) x_flow + (1 - 2t + 2t^2) v) / sqrt(t^2 + (1 - t)^2)
    times sd."""
    nd = x_flow.ndim
    t = per_example(t_B, nd)
    x0 = x_flow - t * v
    e = x_flow + (1.0 - t) * v
    return (
        -per_example(jnp.sin(theta_B), nd) * x0 + per_example(jnp.cos(theta_B), nd) * sigma_data * e
    )


@dataclasses.dataclass(frozen=True)
class Flow(Objective):
    """Flow matching; ``num_steps`` Euler steps by default (``config.sampling``)."""

    name: ClassVar[str] = "flow"

    p_mean: float = 0.0  # t = sigmoid(N(p_mean, p_std^2))
    p_std: float = 1.0
    noise_cond_scale: float = option(1.0, section="model")  # SANA's flow models: 1000
    num_steps: int = option(50, section="sampling")

    def __post_init__(self):
        if self.p_std <= 0:
            raise ConfigError(f"config.objective.p_std must be > 0, got {self.p_std}")
        if self.num_steps < 1:
            raise ConfigError(f"config.sampling.num_steps must be >= 1, got {self.num_steps}")

    def velocity(
        self, apply_fn, params, x_t, t_B, labels=None, train=False, dropout_rng=None
    ) -> jax.Array:
        """The predicted flow velocity F(x_t, s t): (B, ...), at least float32."""
        if train and dropout_rng is None:
            raise ValueError("train=True needs a dropout_rng")
        rngs = {"dropout": dropout_rng} if train else {}
        out = apply_fn(
            {"params": params}, x_t, self.noise_cond_scale * t_B, labels, train, rngs=rngs
        )
        return out.astype(jnp.promote_types(out.dtype, jnp.float32))

    def velocity_in_trigflow(
        self, apply_fn, params, x_theta, theta_B, labels, sigma_data: float
    ) -> jax.Array:
        """This flow model as a TrigFlow teacher: the TrigFlow velocity at (x_theta, theta) of
        a process whose noise has std ``sigma_data`` (docs/objectives.md, Flow matching)."""
        x_flow, t, _ = flow_to_trigflow(x_theta, theta_B, sigma_data)
        v = self.velocity(apply_fn, params, x_flow, t, labels)
        return trigflow_velocity_from_flow(v, x_flow, t, theta_B, sigma_data)

    def loss(
        self,
        params: Any,
        apply_fn: ApplyFn,
        x: jax.Array,
        labels: jax.Array | None,
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, Metrics]:
        """(1/D) ||F(x_t, t) - (e - x0)||^2 per example."""
        del step
        k_t, k_e, k_dropout = jax.random.split(rng, 3)
        batch = x.shape[0]
        t = jax.nn.sigmoid(self.p_mean + self.p_std * jax.random.normal(k_t, (batch,)))
        e = jax.random.normal(k_e, x.shape, jnp.float32)
        tb = per_example(t, x.ndim)
        x_t = (1.0 - tb) * x + tb * e
        v = self.velocity(apply_fn, params, x_t, t, labels, True, k_dropout)
        err = jnp.sum(jnp.square(v - (e - x)).reshape(batch, -1), axis=1) / (x.size // batch)
        return err, {"velocity_mse": jnp.mean(err), "t_mean": jnp.mean(t)}

    def sampler_plans(self) -> dict[str, SamplerPlan]:
        return {f"euler{self.num_steps}": self.plan(self.num_steps)}

    def plan(
        self,
        steps: int | None = None,
        times: Sequence[float] | None = None,
        method: str | None = None,
    ) -> SamplerPlan:
        if method not in (None, "euler"):
            raise ValueError(f"flow matching samples with 'euler', got {method!r}")
        if times is None:
            steps = self.num_steps if steps is None else int(steps)
            if steps < 1:
                raise ValueError(f"the sampler needs >= 1 step, got {steps}")
            times = [1.0 - i / steps for i in range(steps)]
        times = check_times(times, 0.0, 1.0, "times")
        return SamplerPlan("euler", times, len(times))

    def sample(self, apply_fn, net_params, rng, shape, plan, labels=None) -> jax.Array:
        """x_1 = e, then x_s = x_t + (s - t) v(x_t, t) along the plan's times and 0."""
        batch = shape[0]
        x = jax.random.normal(rng, shape, jnp.float32)
        times = jnp.asarray((*plan.times, 0.0), jnp.float32)

        def step(x, ts):
            t, s = ts
            v = self.velocity(apply_fn, net_params, x, jnp.full((batch,), t), labels)
            return x + (s - t) * v, None

        x, _ = jax.lax.scan(step, x, (times[:-1], times[1:]))
        return x
