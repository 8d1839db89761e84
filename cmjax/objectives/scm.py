"""Continuous-time consistency models on TrigFlow (Lu & Song 2024, arXiv 2410.11081,
Algorithm 1; docs/objectives.md, sCT and sCD): ``sct`` (training) and ``scd`` (distillation).

The consistency function f(x_t, t) = cos t x_t - sin t sd F(x_t/sd, t) is trained with
Algorithm 1: one ``jax.jvp`` gives F and J = cos t sin t sd dF/dt along the ODE dx_t/dt (sCT:
the conditional velocity cos t z - sin t x0; sCD: sd F_teacher(x_t/sd, t) of a frozen TrigFlow
teacher, a network of any architecture loaded by the loop), tangent warmup, tangent
normalization and the learned adaptive weight w(t). Sampled in 1 or 2 consistency steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from cmjax.errors import ConfigError
from cmjax.models.embeddings import sinusoidal_embedding
from cmjax.objectives.base import (
    ApplyFn,
    Frozen,
    FrozenNetwork,
    FrozenSpec,
    Metrics,
    SamplerPlan,
    one_or_two_step_plan,
    option,
)
from cmjax.objectives.preconditioning import per_example
from cmjax.objectives.trigflow import (
    HALF_PI,
    TrigFlowBase,
    raw_network,
    sq_sum,
    trig_consistency_fn,
)


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


@dataclasses.dataclass(frozen=True)
class SCT(TrigFlowBase):
    """Continuous-time consistency training (sCT); params = {"net", "adaptive_weight"}."""

    name: ClassVar[str] = "sct"

    warmup_steps: int = 10_000  # tangent warmup r = min(1, step / warmup_steps)
    tangent_norm_c: float = 0.1  # g <- g / (||g|| + c)
    weight_channels: int = 128  # positional embedding size of the adaptive weight w(t)
    noise_cond_scale: float = option(1.0, section="model")
    two_step_t: float = option(1.1, section="sampling")

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
        sq = sq_sum(f - f_sg - g) / dim
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
        return one_or_two_step_plan(
            steps,
            times,
            method,
            name="consistency",
            first=self.t_max,
            second=self.two_step_t,
            bounds=(0.0, HALF_PI),
            what="times",
        )

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
    """Continuous-time consistency distillation (sCD) from a frozen diffusion teacher.

    ``teacher``: the work directory of a ``trigflow`` run, or of a ``flow`` (flow matching)
    run, whose velocity is converted into a TrigFlow one without retraining (SANA-Sprint;
    ``cmjax.objectives.flow``). The loop loads its first EMA network once, with its own saved
    config building its own network (any architecture; the same data, and for TrigFlow the
    same sigma_data), and checkpoints it with the run; the teacher runs deterministically (no
    dropout) with its own time conditioning.
    """

    name: ClassVar[str] = "scd"

    teacher: str = ""

    def frozen_networks(self) -> Mapping[str, FrozenSpec]:
        return {
            "teacher": FrozenSpec(
                self.teacher,
                ("trigflow", "flow"),
                "config.objective.teacher",
                "the work directory of a TrigFlow or flow-matching run "
                "(e.g. configs/cifar10_trigflow.py)",
            )
        }

    def check_frozen(self, name: str, network: FrozenNetwork) -> None:
        if network.objective.name != "trigflow":
            return  # a flow model: converted for this run's sigma_data
        sd = network.objective.sigma_data
        if sd != self.sigma_data:
            raise ConfigError(
                f"the teacher {self.teacher!r} has sigma_data={sd}, this run "
                f"{self.sigma_data}: TrigFlow times agree only when they match"
            )

    def dxdt(self, apply_fn, frozen, x0, z, x_t, t, labels) -> jax.Array:
        """sCD: the teacher's TrigFlow velocity at (x_t, t), deterministic: sd F_teacher(x_t /
        sd, t) for a TrigFlow teacher, the converted velocity for a flow teacher."""
        del apply_fn, x0, z
        if not frozen or "teacher" not in frozen:
            raise ValueError("sCD needs the teacher: pass frozen={'teacher': Frozen(...)}")
        teacher: Frozen = frozen["teacher"]
        return teacher.objective.velocity_in_trigflow(
            teacher.apply_fn,
            jax.lax.stop_gradient(teacher.params),
            x_t,
            t,
            labels,
            self.sigma_data,
        )
