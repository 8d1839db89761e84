"""Consistency distillation (CD; Song et al. 2023, *Consistency Models*, Algorithm 2; checked
against the official JAX code, openai/consistency_models_cifar10 ``jcm/losses.py``
``get_consistency_loss_fn``), with SCott's stochastic teacher (Liu et al. 2024) as an option.
docs/objectives.md, Consistency distillation.

On the descending Karras grid T_0 = sigma_max > ... > T_{N-1} = sigma_min, draw n uniform in
{0, ..., N - 1 - skip}; t = T_n, t' = T_{n+skip}; x_t = x0 + t z. A frozen EDM teacher (its
own network and preconditioning) moves x_t to x_t' with ``teacher_solver`` (Heun by
default: one step between adjacent grid points); the loss is

    lambda(t) d(f_theta(x_t, t), sg f_theta-(x_t', t'))

with one dropout key for both, f iCT's boundary parametrization (f(x, sigma_min) = x), d one
of l2 / l1 (per-example means, as jcm), pseudo-Huber or LPIPS, and theta- the target network:
the online parameters under stop-gradient when ``target_ema`` (mu) is 0 (CIFAR-10), else an
EMA of them at rate mu kept in the method state (ImageNet 64: 0.95), apart from the
evaluation EMA. Sampled like iCT (1 step at sigma_max, 2 steps through two_step_sigma).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from cmjax.errors import ConfigError
from cmjax.models.lpips import LPIPS
from cmjax.objectives import distances
from cmjax.objectives.base import (
    GENERATOR,
    Frozen,
    FrozenNetwork,
    FrozenSpec,
    Metrics,
    Nets,
    Objective,
    ObjectiveContext,
    option,
)
from cmjax.objectives.ict import TWO_STEP_SIGMA, ConsistencySampling
from cmjax.objectives.preconditioning import consistency_fn, per_example

SOLVERS = ("heun", "euler", "sde")
WEIGHTINGS = ("uniform", "snrp1", "truncated_snr", "snr")
DISTANCES = ("l2", "l1", "pseudo_huber", "lpips")


def karras_descending(n: int, sigma_min: float, sigma_max: float, rho: float) -> jax.Array:
    """T_0 = sigma_max > ... > T_{n-1} = sigma_min, (n,) float32 (jcm's grid). Written in jcm's
    order of operations rather than as ``ict_schedule.karras_sigmas(n)[::-1]`` (the same
    points, rounded differently), so the loss is jcm's to float32 (tests/test_cd.py)."""
    i = jnp.arange(n, dtype=jnp.float32)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    t = (hi + i / (n - 1) * (lo - hi)) ** rho
    return t.at[0].set(sigma_max).at[-1].set(sigma_min)


def karras_between(t: jax.Array, t2: jax.Array, j: int, h: int, rho: float) -> jax.Array:
    """The j-th of h + 1 points of a rho-spaced grid from t (j = 0) to t2 (j = h), (B,)."""
    if j == 0:
        return t
    if j == h:
        return t2
    a, b = t ** (1 / rho), t2 ** (1 / rho)
    return (a + j / h * (b - a)) ** rho


def sde_step(x, denoised, u, u2, eta: float, noise):
    """One DDIM-eta step in EDM / VE units from noise level u to u2 < u: with eps = (x - D)/u
    and s = eta u2 sqrt(1 - u2^2 / u^2), x' = D + sqrt(u2^2 - s^2) eps + s noise. eta = 0 is the
    Euler (DDIM) step; eta = 1 samples the posterior q(x_u2 | x_u, x0 = D)."""
    nd = x.ndim
    u, u2 = per_example(u, nd), per_example(u2, nd)
    eps = (x - denoised) / u
    s = eta * u2 * jnp.sqrt(jnp.maximum(1.0 - jnp.square(u2 / u), 0.0))
    return denoised + jnp.sqrt(jnp.maximum(jnp.square(u2) - jnp.square(s), 0.0)) * eps + s * noise


def teacher_step(
    teacher: Frozen,
    x_t: jax.Array,
    t: jax.Array,
    t2: jax.Array,
    labels: jax.Array | None,
    rng: jax.Array,
    *,
    solver: str,
    substeps: int,
    eta: float,
    rho: float,
) -> jax.Array:
    """x_t2: the frozen EDM teacher's ``solver`` from noise level t to t2 < t (both (B,)) in
    ``substeps`` steps on a rho-spaced sub-grid; no gradient flows through it."""
    params = jax.lax.stop_gradient(teacher.params)

    def denoise(x, u):
        return teacher.objective.denoise(teacher.apply_fn, params, x, u, labels)

    x = x_t
    keys = jax.random.split(rng, substeps)
    for j in range(substeps):
        u = karras_between(t, t2, j, substeps, rho)
        u2 = karras_between(t, t2, j + 1, substeps, rho)
        d_x = denoise(x, u)
        if solver == "sde":
            x = sde_step(x, d_x, u, u2, eta, jax.random.normal(keys[j], x.shape, x.dtype))
            continue
        slope = (x - d_x) / per_example(u, x.ndim)
        x_next = x + per_example(u2 - u, x.ndim) * slope
        if solver == "heun":
            slope2 = (x_next - denoise(x_next, u2)) / per_example(u2, x.ndim)
            x_next = x + per_example(u2 - u, x.ndim) * 0.5 * (slope + slope2)
        x = x_next
    return jax.lax.stop_gradient(x)


def cd_weight(t: jax.Array, weighting: str) -> jax.Array:
    """lambda(t): jcm's uniform (CD's default), snrp1 1/t^2 + 1, truncated_snr max(1/t^2, 1),
    snr 1/t^2."""
    if weighting == "uniform":
        return jnp.ones_like(t)
    if weighting == "snrp1":
        return 1.0 / t**2 + 1.0
    if weighting == "truncated_snr":
        return jnp.maximum(1.0 / t**2, 1.0)
    return 1.0 / t**2


@dataclasses.dataclass(frozen=True)
class CD(ConsistencySampling, Objective):
    """Consistency distillation from a frozen EDM teacher (``teacher``: a cmjax ``edm`` run or
    an EDM checkpoint written by ``cmjax-import``, of any architecture)."""

    name: ClassVar[str] = "cd"

    teacher: str = ""
    num_scales: int = 18  # N Karras points (CIFAR-10 18, ImageNet 64 40)
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_data: float = 0.5
    distance: str = "l2"  # l2 | l1 | pseudo_huber | lpips (the CIFAR-10 recipe: lpips)
    loss_c: float | None = None  # pseudo-Huber c; None: 0.00054 sqrt(D)
    weighting: str = "uniform"
    target_ema: float = 0.0  # mu: 0 = the online network under stop-gradient
    teacher_solver: str = "heun"  # heun | euler | sde (SCott)
    substeps: int = 1  # solver steps from t to t'
    eta: float | None = None  # the sde solver's noise (DDIM eta in [0, 1]); None: 1
    skip: int = 1  # grid points between t and t'
    init_from_teacher: bool = True  # the student starts as the teacher when shapes allow
    lpips_vgg: str = ""  # distance "lpips": torchvision's VGG16 state dict (.pth)
    lpips_lin: str = ""  # and the lpips package's linear heads (lpips/weights/v0.1/vgg.pth)
    lpips_size: int = 224  # both images resized (bilinear) to this side first
    lpips_pool: str = "max"  # max (lpips, jcm's CIFAR-10) | avg (piq, the ImageNet 64 code)
    noise_cond_scale: float = option(1.0, section="model")
    two_step_sigma: float = option(TWO_STEP_SIGMA, section="sampling")

    def __post_init__(self):
        for key, value, allowed in (
            ("distance", self.distance, DISTANCES),
            ("weighting", self.weighting, WEIGHTINGS),
            ("teacher_solver", self.teacher_solver, SOLVERS),
            ("lpips_pool", self.lpips_pool, ("max", "avg")),
        ):
            if value not in allowed:
                raise ConfigError(f"config.objective.{key} must be one of {allowed}, got {value!r}")
        if not 1 <= self.skip <= self.num_scales - 1 or self.substeps < 1:
            raise ConfigError(
                "CD needs 1 <= config.objective.skip <= num_scales - 1 and substeps >= 1, got "
                f"skip={self.skip}, num_scales={self.num_scales}, substeps={self.substeps}"
            )
        if not 0.0 <= self.target_ema < 1.0:
            raise ConfigError(
                f"config.objective.target_ema must be in [0, 1), got {self.target_ema}"
            )
        if self.eta is not None and (self.teacher_solver != "sde" or not 0 <= self.eta <= 1):
            raise ConfigError(
                "config.objective.eta is the sde teacher's noise, in [0, 1]; got "
                f"eta={self.eta} with teacher_solver={self.teacher_solver!r}"
            )
        if self.distance != "lpips" and (self.lpips_vgg or self.lpips_lin):
            raise ConfigError(
                "config.objective.lpips_vgg / lpips_lin are set but distance is "
                f"{self.distance!r}: set distance='lpips' or leave the files unset"
            )
        if not 0 < self.sigma_min < self.two_step_sigma < self.sigma_max:
            raise ConfigError(
                "CD needs 0 < sigma_min < config.sampling.two_step_sigma < sigma_max, got "
                f"{self.sigma_min}, {self.two_step_sigma}, {self.sigma_max}"
            )

    @classmethod
    def build(cls, values: dict[str, Any], ctx: ObjectiveContext) -> CD:
        if values["distance"] == "lpips" and (
            len(ctx.data_shape) != 3 or ctx.data_shape[-1] not in (1, 3)
        ):
            raise ConfigError(
                f"config.objective.distance='lpips' compares images (H, W, 1 or 3); this data "
                f"has examples of shape {ctx.data_shape}: use l2, l1 or pseudo_huber"
            )
        if values["loss_c"] is None or values["loss_c"] <= 0:
            dim = math.prod(ctx.data_shape)
            values = {**values, "loss_c": distances.default_pseudo_huber_c(dim)}
        return cls(**values)

    # -- what it reads -----------------------------------------------------------------------
    def frozen_networks(self) -> Mapping[str, FrozenSpec]:
        specs = {
            "teacher": FrozenSpec(
                self.teacher,
                ("edm",),
                "config.objective.teacher",
                "the work directory of an EDM run or of a cmjax-import'ed EDM checkpoint",
            )
        }
        if self.distance == "lpips":
            specs["lpips"] = FrozenSpec(
                "",
                (),
                "config.objective.lpips_vgg and lpips_lin",
                "torchvision's VGG16 state dict and the lpips package's vgg.pth",
                loader="lpips",
                files=(self.lpips_vgg, self.lpips_lin),
                file_keys=("config.objective.lpips_vgg", "config.objective.lpips_lin"),
            )
        return specs

    def check_frozen(self, name: str, network: FrozenNetwork) -> None:
        if name != "teacher":
            return
        if network.objective.sigma_data != self.sigma_data:
            raise ConfigError(
                f"the teacher has sigma_data={network.objective.sigma_data}, this run "
                f"{self.sigma_data}: noise levels agree only when they match"
            )
        scale = network.objective.noise_cond_scale
        if self.init_from_teacher and scale != self.noise_cond_scale:
            raise ConfigError(
                f"the student starts as the teacher, whose network reads c_noise scaled by "
                f"{scale}; this run's config.model.noise_cond_scale is {self.noise_cond_scale}: "
                "set it to the teacher's, or config.objective.init_from_teacher=False"
            )

    def init_from_frozen(self) -> str | None:
        return "teacher" if self.init_from_teacher else None

    def _sigmas(self):
        return self.sigma_min, self.sigma_max, self.sigma_data, self.noise_cond_scale

    # -- the target network (method state) ---------------------------------------------------
    def init_method_state(self, params: Mapping[str, Any], rng: jax.Array) -> Any:
        del rng
        if self.target_ema == 0.0:
            return None  # the target is the online network under stop-gradient
        return {"target": jax.tree.map(jnp.copy, params[GENERATOR])}

    def update_method_state(self, method_state, player, params, step, metrics):
        del step, metrics
        if method_state is None or player != GENERATOR:
            return method_state
        mu = self.target_ema
        target = jax.tree.map(
            lambda t, p: mu * t + (1.0 - mu) * p, method_state["target"], params[GENERATOR]
        )
        return {"target": target}

    # -- training ----------------------------------------------------------------------------
    def f(self, apply_fn, params, x, sigma_B, labels, dropout_rng):
        """The student (or target) consistency function, as trained (dropout on)."""
        return consistency_fn(
            apply_fn,
            params,
            x,
            sigma_B,
            labels,
            sigma_data=self.sigma_data,
            sigma_min=self.sigma_min,
            noise_cond_scale=self.noise_cond_scale,
            train=True,
            dropout_rng=dropout_rng,
        )

    def distance_fn(self, nets: Nets):
        if self.distance == "l2":
            return distances.mean_l2
        if self.distance == "l1":
            return distances.mean_l1
        if self.distance == "pseudo_huber":
            return lambda a, b: distances.pseudo_huber(a, b, self.loss_c)
        params = jax.lax.stop_gradient(nets.frozen["lpips"].params)
        model, size = LPIPS(pool=self.lpips_pool), self.lpips_size

        def lpips_distance(a, b):
            if a.shape[-1] == 1:  # grey images: the same on every channel
                a, b = (jnp.repeat(v, 3, axis=-1) for v in (a, b))
            shape = (a.shape[0], size, size, 3)
            a, b = (jax.image.resize(v, shape, method="bilinear") for v in (a, b))
            return model.apply({"params": params}, a, b)

        return lpips_distance

    def player_loss(self, player, params, nets: Nets, batch, rng, step):
        del step
        if player != GENERATOR:
            raise NotImplementedError(f"CD has no player {player!r}")
        x = batch["x"]
        k_n, k_z, k_dropout, k_teacher = jax.random.split(rng, 4)
        n = jax.random.randint(k_n, x.shape[:1], 0, self.num_scales - self.skip)
        z = jax.random.normal(k_z, x.shape, jnp.float32)
        return self.loss_at(params, nets, x, batch.get("label"), n, z, k_dropout, k_teacher)

    def loss_at(self, params, nets: Nets, x, labels, n, z, dropout_rng, teacher_rng):
        """The loss at given grid indices ``n`` (B,) int in [0, N - 1 - skip] and noise ``z``
        (like ``x``): (per-example lambda(t) d, metrics)."""
        apply_fn = nets.apply[GENERATOR]
        grid = karras_descending(self.num_scales, self.sigma_min, self.sigma_max, self.rho)
        t, t2 = grid[n], grid[n + self.skip]
        x_t = x + per_example(t, x.ndim) * z
        student = self.f(apply_fn, params, x_t, t, labels, dropout_rng)
        x_t2 = teacher_step(
            nets.frozen["teacher"],
            x_t,
            t,
            t2,
            labels,
            teacher_rng,
            solver=self.teacher_solver,
            substeps=self.substeps,
            eta=1.0 if self.eta is None else self.eta,
            rho=self.rho,
        )
        target_params = params if nets.method_state is None else nets.method_state["target"]
        target = self.f(
            apply_fn, jax.lax.stop_gradient(target_params), x_t2, t2, labels, dropout_rng
        )
        target = jax.lax.stop_gradient(target)
        dist = self.distance_fn(nets)(student, target)
        weight = cd_weight(t, self.weighting)
        metrics: Metrics = {"distance": jnp.mean(dist), "sigma_mean": jnp.mean(t)}
        return weight * dist, metrics
