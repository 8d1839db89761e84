"""TrigFlow diffusion and the continuous-time consistency models sCT / sCD built on it
(Lu & Song 2024, arXiv 2410.11081, Eq. 3-8 and Algorithm 1; OBJECTIVES.md §4).

TrigFlow: x_t = cos t x0 + sin t z, z ~ N(0, sd^2 I), t in [0, pi/2]; the network predicts the
velocity, sd F(x_t / sd, c_noise(t)) ~ v_t = cos t z - sin t x0, with c_noise(t) =
noise_cond_scale * t. Training times: tau ~ N(P_mean, P_std^2), t = arctan(e^tau / sd),
clamped to [1e-4, pi/2 - 1e-4].

- ``trigflow``: the diffusion loss (1/D) ||sd F - v_t||^2 (a mean over the example), sampled
  with the first-order TrigFlow (DDIM) step x_s = cos(t - s) x_t - sin(t - s) sd F(x_t/sd, t)
  over the EDM (Karras) sigma grid mapped to times t = arctan(sigma / sd).
- ``sct`` / ``scd``: the consistency function f(x_t, t) = cos t x_t - sin t sd F(x_t/sd, t)
  trained with Algorithm 1: one ``jax.jvp`` gives F and J = cos t sin t sd dF/dt along the
  ODE dx_t/dt (sCT: the conditional velocity cos t z - sin t x0; sCD: sd F_teacher(x_t/sd, t)
  of a frozen TrigFlow teacher), tangent warmup, tangent normalization and the learned
  adaptive weight w(t). Sampled in 1 or 2 consistency steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from cmjax.consistency import per_example
from cmjax.errors import ConfigError
from cmjax.models.embeddings import sinusoidal_embedding
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
from cmjax.objectives.edm import karras_sampling_grid

T_CLAMP = 1e-4  # training times are clamped to [T_CLAMP, pi/2 - T_CLAMP]
HALF_PI = math.pi / 2


def trigflow_defaults() -> dict[str, Any]:
    """TrigFlow's constants (CIFAR-10, Lu & Song 2024 Appendix G) as ``config.objective`` keys."""
    return dict(
        sigma_data=0.5,
        p_mean=-1.0,
        p_std=1.4,
        sigma_max=80.0,  # sampling starts at t_max = arctan(sigma_max / sd) = 1.5645
        sigma_min=0.002,  # the DDIM grid's smallest sigma (then one last step to t = 0)
        rho=7.0,
    )


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


def network_and_tangent(
    apply_fn: ApplyFn,
    net_params: Any,
    x_t: jax.Array,
    t_B: jax.Array,
    dxdt: jax.Array,
    labels_B: jax.Array | None,
    dropout_rng: jax.Array | None,
    *,
    sigma_data: float,
    noise_cond_scale: float,
    train: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """(F, J) from one forward-mode product: F = F(x_t/sd, t) and
    J = cos t sin t sd dF/dt = jvp of F w.r.t. (x_t/sd, t) with tangents
    (cos t sin t dxdt, cos t sin t sd), the total derivative along the ODE dx_t/dt = dxdt.
    The same dropout key serves primal and tangent. F is differentiable w.r.t. the params."""
    sd = sigma_data
    cs = jnp.cos(t_B) * jnp.sin(t_B)

    def f(x_in, t):
        return raw_network(
            apply_fn,
            net_params,
            x_in,
            t,
            labels_B,
            noise_cond_scale=noise_cond_scale,
            train=train,
            dropout_rng=dropout_rng,
        )

    x_in = (x_t / sd).astype(t_B.dtype)
    tangents = ((per_example(cs, x_t.ndim) * dxdt).astype(t_B.dtype), cs * sd)
    return jax.jvp(f, (x_in, t_B), tangents)


def scm_tangent(
    f_sg: jax.Array,
    jvp_sg: jax.Array,
    x_t: jax.Array,
    t_B: jax.Array,
    dxdt: jax.Array,
    warmup: jax.Array | float,
    *,
    sigma_data: float,
    norm_c: float,
) -> tuple[jax.Array, jax.Array]:
    """Algorithm 1's normalized tangent g and ||g|| before normalization (B,).

    g = -cos^2 t (sd F - dxdt) - r (cos t sin t x_t + J);  g <- g / (||g|| + c), the L2 norm
    over the whole example. ``f_sg``, ``jvp_sg``: F and J under stop_gradient.
    """
    nd = x_t.ndim
    cos, sin = per_example(jnp.cos(t_B), nd), per_example(jnp.sin(t_B), nd)
    g = -(cos**2) * (sigma_data * f_sg - dxdt) - warmup * (cos * sin * x_t + jvp_sg)
    norm = jnp.sqrt(jnp.sum(jnp.square(g).reshape(g.shape[0], -1), axis=1))
    return g / per_example(norm + norm_c, nd), norm


def adaptive_weight(weight_params: Mapping[str, jax.Array], c_noise_B: jax.Array) -> jax.Array:
    """w(t) = Linear(positional embedding of c_noise(t)) -> (B,) float32 (a Dense to 1 unit)."""
    kernel = weight_params["kernel"].astype(jnp.float32)
    emb = sinusoidal_embedding(c_noise_B.astype(jnp.float32), kernel.shape[0])
    return emb @ kernel + weight_params["bias"].astype(jnp.float32)


def _sq_sum(a: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(a).reshape(a.shape[0], -1), axis=1)


@dataclasses.dataclass(frozen=True)
class _TrigFlowBase(Objective):
    sigma_data: float = 0.5
    p_mean: float = -1.0
    p_std: float = 1.4
    sigma_max: float = 80.0
    noise_cond_scale: float = 1.0

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


@dataclasses.dataclass(frozen=True)
class TrigFlow(_TrigFlowBase):
    """TrigFlow diffusion (velocity prediction); ``num_steps`` DDIM steps by default."""

    name: ClassVar[str] = "trigflow"
    SAMPLING_KEYS: ClassVar[frozenset[str]] = frozenset({"num_steps"})

    sigma_min: float = 0.002
    rho: float = 7.0
    num_steps: int = 50

    def __post_init__(self):
        self._check()
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError("TrigFlow needs 0 < sigma_min < sigma_max")

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return trigflow_defaults()

    @classmethod
    def from_config(cls, section: Mapping[str, Any], ctx: ObjectiveContext) -> TrigFlow:
        check_sampling_keys(cls, ctx.sampling)
        v = read_section(section, cls.name, cls.defaults())
        return cls(
            **{k: float(x) for k, x in v.items()},
            noise_cond_scale=ctx.noise_cond_scale,
            num_steps=int(ctx.sampling.get("num_steps", 50)),
        )

    def loss(
        self,
        params: Any,
        apply_fn: ApplyFn,
        x: jax.Array,
        labels: jax.Array | None,
        rng: jax.Array,
        step: jax.Array,
        frozen: Any = None,
    ) -> tuple[jax.Array, Metrics]:
        """(1/D) ||sd F(x_t/sd, t) - v_t||^2 per example, v_t = cos t z - sin t x0."""
        del step, frozen
        t, z, k_dropout = self._draw(rng, x)
        cos, sin = per_example(jnp.cos(t), x.ndim), per_example(jnp.sin(t), x.ndim)
        x_t = cos * x + sin * z
        v_t = cos * z - sin * x
        v = self.velocity(apply_fn, params, x_t, t, labels, True, k_dropout)
        mse = _sq_sum(v - v_t) / (x.size // x.shape[0])
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


def sct_defaults() -> dict[str, Any]:
    """sCT's keys (Algorithm 1; CIFAR-10 values) as ``config.objective`` keys."""
    return dict(
        sigma_data=0.5,
        p_mean=-1.0,
        p_std=1.4,
        sigma_max=80.0,
        warmup_steps=10_000,  # tangent warmup r = min(1, step / warmup_steps)
        tangent_norm_c=0.1,  # g <- g / (||g|| + c)
        weight_channels=128,  # positional embedding size of the adaptive weight w(t)
    )


@dataclasses.dataclass(frozen=True)
class SCT(_TrigFlowBase):
    """Continuous-time consistency training (sCT); params = {"net", "adaptive_weight"}."""

    name: ClassVar[str] = "sct"
    SAMPLING_KEYS: ClassVar[frozenset[str]] = frozenset({"two_step_t"})

    warmup_steps: int = 10_000
    tangent_norm_c: float = 0.1
    weight_channels: int = 128
    two_step_t: float = 1.1

    def __post_init__(self):
        self._check()
        if self.warmup_steps < 0 or self.tangent_norm_c < 0 or self.weight_channels < 2:
            raise ConfigError(
                "sCT needs warmup_steps >= 0, tangent_norm_c >= 0, weight_channels >= 2"
            )
        if not 0 < self.two_step_t < self.t_max:
            raise ConfigError(
                f"config.sampling.two_step_t must lie in (0, t_max={self.t_max:.4f}), "
                f"got {self.two_step_t}"
            )

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return sct_defaults()

    @classmethod
    def _values(cls, section, ctx) -> dict[str, Any]:
        check_sampling_keys(cls, ctx.sampling)
        v = read_section(section, cls.name, cls.defaults())
        out = {k: float(v[k]) for k in ("sigma_data", "p_mean", "p_std", "sigma_max")}
        out.update(
            warmup_steps=int(v["warmup_steps"]),
            tangent_norm_c=float(v["tangent_norm_c"]),
            weight_channels=int(v["weight_channels"]),
            noise_cond_scale=ctx.noise_cond_scale,
            two_step_t=float(ctx.sampling.get("two_step_t", 1.1)),
        )
        return {**v, **out}

    @classmethod
    def from_config(cls, section: Mapping[str, Any], ctx: ObjectiveContext) -> SCT:
        return cls(**cls._values(section, ctx))

    # -- parameters: the network and the adaptive weight -----------------------------------
    def init_params(self, net_params: Any, rng: jax.Array) -> Any:
        """{"net": net_params, "adaptive_weight": zero Dense(weight_channels -> 1)}: w = 0 at
        the start, so the loss starts as the unweighted ||F - sg(F) - g||^2 / D."""
        del rng
        c = self.weight_channels
        return {
            "net": net_params,
            "adaptive_weight": {
                "kernel": jnp.zeros((c,), jnp.float32),
                "bias": jnp.zeros((), jnp.float32),
            },
        }

    def net_params(self, params: Any) -> Any:
        return params["net"]

    def replace_net_params(self, params: Any, net_params: Any) -> Any:
        return {**params, "net": net_params}

    # -- training --------------------------------------------------------------------------
    def warmup(self, step: jax.Array) -> jax.Array:
        """r = min(1, step / warmup_steps) (1 when warmup_steps = 0)."""
        if self.warmup_steps == 0:
            return jnp.ones((), jnp.float32)
        return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / self.warmup_steps)

    def dxdt(self, apply_fn, frozen, x0, z, x_t, t, labels) -> jax.Array:
        """sCT: the conditional velocity cos t z - sin t x0 (an unbiased estimate of the ODE's)."""
        del apply_fn, frozen, x_t, labels
        nd = x0.ndim
        return per_example(jnp.cos(t), nd) * z - per_example(jnp.sin(t), nd) * x0

    def loss(
        self,
        params: Any,
        apply_fn: ApplyFn,
        x: jax.Array,
        labels: jax.Array | None,
        rng: jax.Array,
        step: jax.Array,
        frozen: Any = None,
    ) -> tuple[jax.Array, Metrics]:
        """e^{w(t)} / D ||F - sg(F) - g||^2 - w(t) per example, in float32 (Algorithm 1)."""
        t, z, k_dropout = self._draw(rng, x)
        nd = x.ndim
        x_t = per_example(jnp.cos(t), nd) * x + per_example(jnp.sin(t), nd) * z
        dxdt = jax.lax.stop_gradient(self.dxdt(apply_fn, frozen, x, z, x_t, t, labels))
        f, jvp = network_and_tangent(
            apply_fn, params["net"], x_t, t, dxdt, labels, k_dropout, **self._kw()
        )
        f, jvp = f.astype(jnp.float32), jvp.astype(jnp.float32)
        f_sg, jvp_sg = jax.lax.stop_gradient(f), jax.lax.stop_gradient(jvp)
        r = self.warmup(step)
        g, g_norm = scm_tangent(
            f_sg,
            jvp_sg,
            x_t,
            t,
            dxdt,
            r,
            sigma_data=self.sigma_data,
            norm_c=self.tangent_norm_c,
        )
        w = adaptive_weight(params["adaptive_weight"], self.noise_cond_scale * t)
        dim = x.size // x.shape[0]
        sq = _sq_sum(f - f_sg - g) / dim
        loss = jnp.exp(w) * sq - w
        metrics = {
            "tangent_norm": jnp.mean(g_norm),
            "adaptive_weight": jnp.mean(w),
            "warmup": r,
            "t_mean": jnp.mean(t),
        }
        return loss, metrics

    # -- sampling --------------------------------------------------------------------------
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
        if times is None:
            if steps not in (1, 2):
                raise ValueError(
                    f"consistency sampling takes 1 or 2 steps from the config, got {steps}; "
                    "pass explicit times for more"
                )
            times = [self.t_max] if steps == 1 else [self.t_max, self.two_step_t]
        times = check_times(times, 0.0, HALF_PI, "times")
        return SamplerPlan("consistency", times, len(times))

    def sample(self, apply_fn, net_params, rng, shape, plan, labels=None) -> jax.Array:
        """x = f(sd z, t_0); for each later time s: x <- f(cos s x + sin s sd z', s)."""
        keys = jax.random.split(rng, len(plan.times))
        batch = shape[0]
        x = None
        for i, (key, t) in enumerate(zip(keys, plan.times, strict=True)):
            z = self.sigma_data * jax.random.normal(key, shape, jnp.float32)
            x_t = z if i == 0 else math.cos(t) * x + math.sin(t) * z
            x = trig_consistency_fn(
                apply_fn, net_params, x_t, jnp.full((batch,), t, jnp.float32), labels, **self._kw()
            )
        return x


@dataclasses.dataclass(frozen=True)
class SCD(SCT):
    """Continuous-time consistency distillation (sCD) from a frozen TrigFlow teacher.

    The teacher's network parameters live in ``TrainState.frozen`` (loaded from the TrigFlow
    work directory ``teacher`` when a fresh state is created, then checkpointed with the run);
    the teacher uses the student's network definition, deterministically (no dropout).
    """

    name: ClassVar[str] = "scd"

    teacher: str = ""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {**sct_defaults(), "teacher": ""}

    @classmethod
    def from_config(cls, section: Mapping[str, Any], ctx: ObjectiveContext) -> SCD:
        v = cls._values(section, ctx)
        return cls(**{**v, "teacher": str(v["teacher"] or "")})

    def init_frozen(self, net_params: Any) -> Any:
        """The teacher's slot: the network's structure filled with NaN until a teacher is
        loaded (``cmjax.teacher``), so a run can never silently distill a random teacher."""
        return jax.tree.map(lambda p: jnp.full(p.shape, jnp.nan, p.dtype), net_params)

    def load_frozen(self, like: Any) -> Any:
        """The teacher run's first EMA network parameters (``cmjax.teacher.load_teacher``)."""
        from cmjax.teacher import load_teacher

        if not self.teacher:
            raise ConfigError(
                "sCD needs config.objective.teacher: the work directory of a TrigFlow run "
                "(e.g. configs/cifar10_trigflow.py) with the same config.model"
            )
        expect = dict(
            name="trigflow", sigma_data=self.sigma_data, noise_cond_scale=self.noise_cond_scale
        )
        return load_teacher(self.teacher, like, expect)

    def dxdt(self, apply_fn, frozen, x0, z, x_t, t, labels) -> jax.Array:
        """sCD: the teacher's velocity sd F_teacher(x_t / sd, t), deterministic."""
        del x0, z
        if frozen is None:
            raise ValueError("sCD needs the teacher's parameters: pass frozen=state.frozen")
        return self.velocity(apply_fn, jax.lax.stop_gradient(frozen), x_t, t, labels)
