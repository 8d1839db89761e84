"""TrigFlow diffusion (Lu & Song 2024, arXiv 2410.11081, Eq. 3-8; docs/objectives.md, TrigFlow)
and the TrigFlow parametrization the continuous-time consistency models (``cmjax.objectives.scm``)
share.

x_t = cos t x0 + sin t z, z ~ N(0, sd^2 I), t in [0, pi/2]; the network predicts the velocity,
sd F(x_t / sd, c_noise(t)) ~ v_t = cos t z - sin t x0, with c_noise(t) = noise_cond_scale * t.
Training times: tau ~ N(P_mean, P_std^2), t = arctan(e^tau / sd), clamped to
[1e-4, pi/2 - 1e-4]. The loss is (1/D) ||sd F - v_t||^2 (a mean over the example), sampled with
the first-order TrigFlow (DDIM) step x_s = cos(t - s) x_t - sin(t - s) sd F(x_t/sd, t) over the
EDM (Karras) sigma grid mapped to times t = arctan(sigma / sd).
"""

from __future__ import annotations

import dataclasses
import math
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
from cmjax.objectives.edm import karras_sampling_grid
from cmjax.objectives.preconditioning import per_example

T_CLAMP = 1e-4  # training times are clamped to [T_CLAMP, pi/2 - T_CLAMP]
HALF_PI = math.pi / 2


def sample_times(key: jax.Array, batch: int, p_mean: float, p_std: float, sd: float) -> jax.Array:
    """t = arctan(e^tau / sd), tau ~ N(p_mean, p_std^2), clamped to [1e-4, pi/2 - 1e-4]: (B,)."""
    tau = p_mean + p_std * jax.random.normal(key, (batch,), jnp.float32)
    return jnp.clip(jnp.arctan(jnp.exp(tau) / sd), T_CLAMP, HALF_PI - T_CLAMP)


def draw_training_noise(
    rng: jax.Array, x: jax.Array, p_mean: float, p_std: float, sd: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(t (B,), z ~ N(0, sd^2 I) like x, dropout key): one draw shared by every TrigFlow loss,
    so trigflow, sct and scd see the same (t, z, dropout mask) for the same rng."""
    k_t, k_z, k_dropout = jax.random.split(rng, 3)
    t = sample_times(k_t, x.shape[0], p_mean, p_std, sd)
    z = sd * jax.random.normal(k_z, x.shape, jnp.float32)
    return t, z, k_dropout


def _at_least_f32(a: jax.Array) -> jax.Array:
    """float32 for bf16/f16/f32 arrays; float64 stays float64 (the float64 tests)."""
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def raw_network(
    apply_fn: ApplyFn,
    net_params: Any,
    x_in: jax.Array,
    t_B: jax.Array,
    labels_B: jax.Array | None = None,
    *,
    noise_cond_scale: float = 1.0,
    train: bool = False,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """F(x_in, c_noise(t)) with c_noise(t) = noise_cond_scale * t: (B, ...) in at least float32.

    ``x_in`` is the already scaled input x_t / sd.
    """
    if train and dropout_rng is None:
        raise ValueError("train=True needs a dropout_rng")
    rngs = {"dropout": dropout_rng} if train else {}
    out = apply_fn({"params": net_params}, x_in, noise_cond_scale * t_B, labels_B, train, rngs=rngs)
    return _at_least_f32(out)


def trigflow_velocity(
    apply_fn, net_params, x_t, t_B, labels_B=None, *, sigma_data, noise_cond_scale, **kw
) -> jax.Array:
    """The predicted velocity sd F(x_t / sd, t): (B, ...)."""
    f = raw_network(
        apply_fn,
        net_params,
        x_t / sigma_data,
        t_B,
        labels_B,
        noise_cond_scale=noise_cond_scale,
        **kw,
    )
    return sigma_data * f


def trig_consistency_fn(
    apply_fn, net_params, x_t, t_B, labels_B=None, *, sigma_data, noise_cond_scale, **kw
) -> jax.Array:
    """f(x_t, t) = cos t x_t - sin t sd F(x_t / sd, t): (B, ...); f(x, 0) = x exactly."""
    v = trigflow_velocity(
        apply_fn,
        net_params,
        x_t,
        t_B,
        labels_B,
        sigma_data=sigma_data,
        noise_cond_scale=noise_cond_scale,
        **kw,
    )
    c, s = per_example(jnp.cos(t_B), x_t.ndim), per_example(jnp.sin(t_B), x_t.ndim)
    return c * _at_least_f32(x_t) - s * v


def sq_sum(a: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(a).reshape(a.shape[0], -1), axis=1)


@dataclasses.dataclass(frozen=True)
class TrigFlowBase(Objective):
    """What TrigFlow, sCT and sCD share: the time distribution, sigma_data, t_max and the
    velocity parametrization (CIFAR-10 constants, Lu & Song 2024 Appendix G)."""

    sigma_data: float = 0.5
    p_mean: float = -1.0
    p_std: float = 1.4
    sigma_max: float = 80.0  # sampling starts at t_max = arctan(sigma_max / sd) = 1.5645

    def _check(self):
        if self.sigma_data <= 0 or self.p_std <= 0 or self.sigma_max <= 0:
            raise ConfigError("TrigFlow needs sigma_data > 0, p_std > 0 and sigma_max > 0")

    @property
    def t_max(self) -> float:
        """The first sampling time arctan(sigma_max / sd) (1.5645 for 80 / 0.5)."""
        return math.atan(self.sigma_max / self.sigma_data)

    def _draw(self, rng, x):
        return draw_training_noise(rng, x, self.p_mean, self.p_std, self.sigma_data)

    def _kw(self) -> dict[str, Any]:
        return dict(sigma_data=self.sigma_data, noise_cond_scale=self.noise_cond_scale)

    def velocity(self, apply_fn, net_params, x_t, t_B, labels=None, train=False, dropout_rng=None):
        """sd F(x_t / sd, t): (B, ...)."""
        return trigflow_velocity(
            apply_fn,
            net_params,
            x_t,
            t_B,
            labels,
            train=train,
            dropout_rng=dropout_rng,
            **self._kw(),
        )

    def velocity_in_trigflow(
        self, apply_fn, net_params, x_theta, theta_B, labels, sigma_data: float
    ) -> jax.Array:
        """This network as a TrigFlow teacher of a process with noise std ``sigma_data``
        (which must be its own): its velocity."""
        if sigma_data != self.sigma_data:
            raise ValueError(
                f"a TrigFlow teacher of sigma_data {self.sigma_data}, not {sigma_data}"
            )
        return self.velocity(apply_fn, net_params, x_theta, theta_B, labels)


@dataclasses.dataclass(frozen=True)
class TrigFlow(TrigFlowBase):
    """TrigFlow diffusion (velocity prediction); ``num_steps`` DDIM steps by default."""

    name: ClassVar[str] = "trigflow"

    sigma_min: float = 0.002  # the DDIM grid's smallest sigma (then one last step to t = 0)
    rho: float = 7.0
    noise_cond_scale: float = option(1.0, section="model")
    num_steps: int = option(50, section="sampling")

    def __post_init__(self):
        self._check()
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError("TrigFlow needs 0 < sigma_min < sigma_max")

    def loss(
        self,
        params: Any,
        apply_fn: ApplyFn,
        x: jax.Array,
        labels: jax.Array | None,
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, Metrics]:
        """(1/D) ||sd F(x_t/sd, t) - v_t||^2 per example, v_t = cos t z - sin t x0."""
        del step
        t, z, k_dropout = self._draw(rng, x)
        cos, sin = per_example(jnp.cos(t), x.ndim), per_example(jnp.sin(t), x.ndim)
        x_t = cos * x + sin * z
        v_t = cos * z - sin * x
        v = self.velocity(apply_fn, params, x_t, t, labels, True, k_dropout)
        mse = sq_sum(v - v_t) / (x.size // x.shape[0])
        return mse, {"velocity_mse": jnp.mean(mse), "t_mean": jnp.mean(t)}

    def sampler_plans(self) -> dict[str, SamplerPlan]:
        return {f"ddim{self.num_steps}": self.plan(self.num_steps)}

    def plan(
        self,
        steps: int | None = None,
        times: Sequence[float] | None = None,
        method: str | None = None,
    ) -> SamplerPlan:
        if method not in (None, "ddim"):
            raise ValueError(f"TrigFlow samples with 'ddim', got {method!r}")
        if times is None:
            steps = self.num_steps if steps is None else steps
            sigmas = karras_sampling_grid(steps, self.sigma_min, self.sigma_max, self.rho)
            times = [math.atan(s / self.sigma_data) for s in sigmas]
        times = check_times(times, 0.0, HALF_PI, "times")
        return SamplerPlan("ddim", times, len(times))

    def sample(self, apply_fn, net_params, rng, shape, plan, labels=None) -> jax.Array:
        """x_{t_0} = sd z, then x_s = cos(t - s) x_t - sin(t - s) sd F(x_t/sd, t) along the
        plan's times and a last step to s = 0 (one NFE per time)."""
        batch = shape[0]
        x = self.sigma_data * jax.random.normal(rng, shape, jnp.float32)
        times = jnp.asarray((*plan.times, 0.0), jnp.float32)

        def step(x, ts):  # one compiled body for any number of steps (a scan, not unrolled)
            t, s = ts
            v = self.velocity(apply_fn, net_params, x, jnp.full((batch,), t), labels)
            return jnp.cos(t - s) * x - jnp.sin(t - s) * v, None

        x, _ = jax.lax.scan(step, x, (times[:-1], times[1:]))
        return x
