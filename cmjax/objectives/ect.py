"""ECT, Easy Consistency Tuning (Geng et al. 2024, "Consistency Models Made Easy").

docs/objectives.md, ECT; checked against the official code (locuslab/ect ``training/loss.py``
ECMLoss, ``training/networks.py`` ECMPrecond, ``training/ct_training_loop.py``):

- continuous t with ln t ~ N(p_mean, p_std^2) (CIFAR-10 -1.1, 2.0; ImageNet 64 -0.8, 1.6);
- the mapping function r(t) = max(0, t (1 - q^-(s+1) (1 + k sigmoid(-b t)))) with the stage
  s = floor(step / d) computed inside the jitted step from the step counter (one compilation
  for the whole run);
- x_t = x0 + t e and x_r = x0 + r e share e and the dropout key; the target is
  stop_gradient f(x_r, r), and exactly x0 where r = 0 (a denoising target);
- per example (sqrt(||f(x_t, t) - target||^2 + c^2) - c) * w, the norm over the whole
  example; w = 1 / (t - r) with c = 0 (CIFAR-10), or w = 1/t^2 + 1/sd^2 with c = 0.06
  (ImageNet 64, ``weighting="snr_plus_k"``).

Parametrization: training uses EDM's preconditioning with no sigma_min offset (ECMPrecond in
train mode: f = D, the EDM denoiser, so an EDM run initializes it exactly); sampling uses the
sigma_min-offset consistency function (ECMPrecond in eval mode) so f(x, sigma_min) = x. The
official ECMPrecond sets sigma_min = 0.003 (the paper's EDM value is 0.002; we follow the code).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from cmjax.errors import ConfigError
from cmjax.objectives.base import ApplyFn, Metrics, Objective, option
from cmjax.objectives.ict import TWO_STEP_SIGMA, ConsistencySampling
from cmjax.objectives.preconditioning import consistency_fn, per_example

WEIGHTINGS = ("inverse_gap", "snr_plus_k")
MAPPINGS = ("sigmoid", "const")
# float32 can no longer tell r from t (and 1/(t - r) blows up) below this decay q^-(s+1).
MIN_DECAY = 2.0**-22

# The ImageNet 64 settings of the official code (its ``imgnet`` branch, run_imgnet_ecm.sh).
IMAGENET64 = dict(p_mean=-0.8, p_std=1.6, q=4.0, c=0.06, weighting="snr_plus_k")


def ect_stage(step: jax.Array, d: int) -> jax.Array:
    """s = floor(step / d) as int32; ``step`` counts the steps already taken (0 first)."""
    return jnp.asarray(step, jnp.int32) // jnp.int32(d)


def ect_decay(stage: jax.Array, q: float) -> jax.Array:
    """q^-(s+1) in float32."""
    return jnp.exp(-(stage.astype(jnp.float32) + 1.0) * jnp.float32(math.log(q)))


def mapping_gap(
    t: jax.Array, stage: jax.Array, q: float, k: float, b: float, mapping: str = "sigmoid"
) -> jax.Array:
    """t - r(t) = t min(1, q^-(s+1) a(t)), a = 1 + k sigmoid(-b t) ("sigmoid") or 1 ("const").

    Computed directly rather than as t - r, so the weight 1/(t - r) keeps float32 precision
    in late stages where r is within a few ulps of t.
    """
    adj = 1.0 + k * jax.nn.sigmoid(-b * t) if mapping == "sigmoid" else jnp.ones_like(t)
    return t * jnp.minimum(1.0, ect_decay(stage, q) * adj)


def mapping_r(
    t: jax.Array, stage: jax.Array, q: float, k: float, b: float, mapping: str = "sigmoid"
) -> jax.Array:
    """r(t) = max(0, t (1 - q^-(s+1) a(t))): the mapping function of ECT (float32)."""
    adj = 1.0 + k * jax.nn.sigmoid(-b * t) if mapping == "sigmoid" else jnp.ones_like(t)
    return jnp.maximum(0.0, t * (1.0 - ect_decay(stage, q) * adj))


@dataclasses.dataclass(frozen=True)
class ECT(ConsistencySampling, Objective):
    """Easy consistency tuning (the official CIFAR-10 constants, run_ecm.sh / ECMLoss); from
    scratch or (the paper's way) from an EDM run's EMA via ``config.init_from``."""

    name: ClassVar[str] = "ect"

    sigma_data: float = 0.5
    p_mean: float = -1.1
    p_std: float = 2.0
    q: float = 2.0
    d: int = 25_000  # stage length in iterations (official: --double 250 ticks of 100)
    k: float = 8.0
    b: float = 1.0
    mapping: str = "sigmoid"
    c: float = 0.0
    weighting: str = "inverse_gap"
    sigma_min: float = 0.003  # sampling parametrization only (official ECMPrecond)
    sigma_max: float = 80.0
    total_steps: int = option(400_000, section="training")
    noise_cond_scale: float = option(1.0, section="model")
    two_step_sigma: float = option(TWO_STEP_SIGMA, section="sampling")

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(
                f"config.objective.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}"
            )
        if self.mapping not in MAPPINGS:
            raise ConfigError(
                f"config.objective.mapping must be one of {MAPPINGS}, got {self.mapping!r}"
            )
        if self.q <= 1 or self.d < 1 or self.k < 0 or self.c < 0 or self.p_std <= 0:
            raise ConfigError(
                "ECT needs config.objective.q > 1, d >= 1, k >= 0, c >= 0 and p_std > 0; got "
                f"q={self.q}, d={self.d}, k={self.k}, c={self.c}, p_std={self.p_std}"
            )
        if not 0 < self.sigma_min < self.two_step_sigma < self.sigma_max:
            raise ConfigError(
                "ECT needs 0 < sigma_min < config.sampling.two_step_sigma < sigma_max, got "
                f"{self.sigma_min}, {self.two_step_sigma}, {self.sigma_max}"
            )
        last_stage = (self.total_steps - 1) // self.d
        if self.q ** -(last_stage + 1) < MIN_DECAY:
            raise ConfigError(
                f"ECT reaches stage {last_stage} by step {self.total_steps - 1} (d={self.d}), "
                f"where q^-(s+1) = {self.q} ** -{last_stage + 1} is below float32 resolution "
                "(r = t); raise config.objective.d or lower q or training.total_steps"
            )

    def _sigmas(self):
        return self.sigma_min, self.sigma_max, self.sigma_data, self.noise_cond_scale

    def train_fn(self, apply_fn, params, x, t_B, labels, dropout_rng):
        """f(x, t) as trained: EDM preconditioning without the sigma_min offset."""
        return consistency_fn(
            apply_fn,
            params,
            x,
            t_B,
            labels,
            sigma_data=self.sigma_data,
            sigma_min=0.0,
            noise_cond_scale=self.noise_cond_scale,
            train=True,
            dropout_rng=dropout_rng,
        )

    def sample_fn(self, apply_fn, params, x, sigma_B, labels=None):
        """f(x, sigma) as sampled: the sigma_min-offset consistency function, f(x, smin) = x."""
        return consistency_fn(
            apply_fn,
            params,
            x,
            sigma_B,
            labels,
            sigma_data=self.sigma_data,
            sigma_min=self.sigma_min,
            noise_cond_scale=self.noise_cond_scale,
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
        k_t, k_noise, k_dropout = jax.random.split(rng, 3)
        batch = x.shape[0]
        t = jnp.exp(self.p_mean + self.p_std * jax.random.normal(k_t, (batch,), jnp.float32))
        stage = ect_stage(step, self.d)
        r = mapping_r(t, stage, self.q, self.k, self.b, self.mapping)
        gap = mapping_gap(t, stage, self.q, self.k, self.b, self.mapping)
        e = jax.random.normal(k_noise, x.shape, jnp.float32)
        student = self.train_fn(
            apply_fn, params, x + per_example(t, x.ndim) * e, t, labels, k_dropout
        )
        # Where r = 0 the target is x0; evaluate the (discarded) network there at t instead of
        # at r = 0, whose c_noise = ln(0) / 4 would put -inf/NaN through the network.
        has_r = r > 0
        r_eval = jnp.where(has_r, r, t)
        teacher = self.train_fn(
            apply_fn,
            jax.lax.stop_gradient(params),
            x + per_example(r_eval, x.ndim) * e,
            r_eval,
            labels,
            k_dropout,
        )
        target = jax.lax.stop_gradient(jnp.where(per_example(has_r, x.ndim), teacher, x))
        sq = jnp.sum(jnp.square(student - target).reshape(batch, -1), axis=1)
        # max(., 1e-30): a finite gradient where student == target bit for bit (sqrt'(0)).
        dist = jnp.sqrt(jnp.maximum(sq, 1e-30) + self.c**2) - self.c
        if self.weighting == "inverse_gap":
            weight = 1.0 / gap
        else:
            weight = 1.0 / t**2 + 1.0 / self.sigma_data**2
        metrics = {
            "distance": jnp.mean(dist),
            "stage": stage.astype(jnp.float32),
            "r_zero_fraction": jnp.mean(1.0 - has_r.astype(jnp.float32)),
            "gap_ratio_mean": jnp.mean(gap / t),
        }
        return weight * dist, metrics
