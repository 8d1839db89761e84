"""iCT noise levels, curriculum and consistency parametrization (pure jax.numpy).

Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models" (iCT), with the
parametrization of Song et al. 2023, "Consistency Models". Noise levels ``sigma`` are standard
deviations in data units (data scaled to [-1, 1]). Every function here works inside ``jax.jit``
with a traced ``step``; nothing allocates a shape that depends on the curriculum.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0
SIGMA_DATA = 0.5
S0 = 10
S1 = 1280
P_MEAN = -1.1
P_STD = 2.0


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """The iCT constants: Karras grid, discretization curriculum, lognormal pair sampling."""

    total_steps: int = 400_000
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    rho: float = RHO
    sigma_data: float = SIGMA_DATA
    s0: int = S0
    s1: int = S1
    p_mean: float = P_MEAN
    p_std: float = P_STD

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )
        if not 1 <= self.s0 <= self.s1:
            raise ValueError(f"need 1 <= s0 <= s1, got s0={self.s0}, s1={self.s1}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.p_std <= 0 or self.sigma_data <= 0 or self.rho <= 0:
            raise ValueError("p_std, sigma_data and rho must be positive")


def karras_sigmas(
    n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> jax.Array:
    """Ascending Karras grid, shape (n,): sigma_1 = sigma_min, ..., sigma_n = sigma_max."""
    if n < 2:
        raise ValueError(f"a Karras grid needs n >= 2 points, got {n}")
    return _karras_table(jnp.asarray(n), n, sigma_min, sigma_max, rho)


def _karras_table(
    n: jax.Array, size: int, sigma_min: float, sigma_max: float, rho: float
) -> jax.Array:
    """Karras grid of a (possibly traced) n points in a table of static length ``size``.

    Entries at 0-based index >= n are padded with sigma_max so everything stays finite.
    The endpoints are set exactly so that f(x, sigma_min) = x holds without rounding error.
    """
    i = jnp.arange(size, dtype=jnp.float32)
    last = (n - 1).astype(jnp.float32)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = (lo + jnp.minimum(i / last, 1.0) * (hi - lo)) ** rho
    sig = jnp.where(i == 0, sigma_min, sig)
    return jnp.where(i >= last, sigma_max, sig).astype(jnp.float32)


def curriculum_stage_steps(total_steps: int, s0: int = S0, s1: int = S1) -> int:
    """K' = floor(K / (log2 floor(s1 / s0) + 1)): training steps between doublings of N."""
    return max(1, math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1)))


def num_scales(step, total_steps: int, s0: int = S0, s1: int = S1) -> jax.Array:
    """N(k) = min(s0 * 2^floor(k / K'), s1) + 1, an int32 scalar; ``step`` may be traced."""
    stage = curriculum_stage_steps(total_steps, s0, s1)
    max_doublings = max(0, math.ceil(math.log2(s1 / s0)))
    doublings = jnp.minimum(jnp.asarray(step, jnp.int32) // stage, max_doublings)
    return jnp.minimum(s0 * jnp.left_shift(jnp.int32(1), doublings), s1) + 1


def _pair_weights(sigmas: jax.Array, p_mean: float, p_std: float) -> jax.Array:
    """Unnormalized lognormal mass of each interval [sigma_i, sigma_{i+1}], shape (n-1,)."""
    cdf = jax.scipy.special.erf((jnp.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
    return cdf[1:] - cdf[:-1]


def noise_level_probs(sigmas: jax.Array, p_mean: float = P_MEAN, p_std: float = P_STD) -> jax.Array:
    """Lognormal pair probabilities, shape (n-1,), summing to 1.

    p(i) ∝ erf((ln s_{i+1} - Pmean) / (√2 Pstd)) - erf((ln s_i - Pmean) / (√2 Pstd)).
    """
    w = _pair_weights(jnp.asarray(sigmas), p_mean, p_std)
    return w / jnp.sum(w)


def sample_sigma_pairs(
    rng: jax.Array, step, batch_size: int, schedule: NoiseSchedule
) -> tuple[jax.Array, jax.Array]:
    """Draw (sigma_i, sigma_{i+1}), each (batch_size,) float32, from the grid of N(step).

    The grid lives in a fixed table of s1 + 1 entries masked beyond N(step), so shapes are
    static and a jitted caller does not recompile when the curriculum doubles N.
    """
    _, sigma, sigma_next = sample_pair_indices(rng, step, batch_size, schedule)
    return sigma, sigma_next


def sample_pair_indices(
    rng: jax.Array, step, batch_size: int, schedule: NoiseSchedule
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(i, sigma_i, sigma_{i+1}): ``sample_sigma_pairs``' draw (the same numbers) together
    with the 0-based pair index i in [0, N(step) - 2], each (batch_size,)."""
    n = num_scales(step, schedule.total_steps, schedule.s0, schedule.s1)
    table = _karras_table(n, schedule.s1 + 1, schedule.sigma_min, schedule.sigma_max, schedule.rho)
    w = _pair_weights(table, schedule.p_mean, schedule.p_std)
    w = jnp.where(jnp.arange(schedule.s1) < n - 1, jnp.maximum(w, 0.0), 0.0)
    cdf = jnp.cumsum(w)
    u = jax.random.uniform(rng, (batch_size,), jnp.float32) * cdf[-1]
    # Inverse-CDF draw: the first index whose cumulative mass exceeds u (never a zero-mass one).
    idx = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, n - 2)
    return idx, table[idx], table[idx + 1]


def adaptive_cauchy_c(n: jax.Array) -> jax.Array:
    """iLCT's adaptive scale c(N) = exp(-1.15 ln(N - 1) - 0.85) for N grid points (N - 1
    pair intervals), a float32 scalar: 0.0303 at N = 11, 1.14e-4 at N = 1281."""
    return jnp.exp(-1.15 * jnp.log(jnp.asarray(n, jnp.float32) - 1.0) - 0.85)


def low_noise_mask(idx: jax.Array, n: jax.Array, fraction: float = 0.25) -> jax.Array:
    """1.0 where pair index i lies in the lowest ``fraction`` of the N - 1 pair intervals
    (i < fraction (N - 1)), else 0.0; (B,) float32. With N = 1281 and 0.25: i < 320."""
    return (jnp.asarray(idx, jnp.float32) < fraction * (n - 1).astype(jnp.float32)).astype(
        jnp.float32
    )


def ict_loss_weight(sigma: jax.Array, sigma_next: jax.Array) -> jax.Array:
    """lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i)."""
    return 1.0 / (sigma_next - sigma)


def consistency_scalings(
    sigma: jax.Array, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(c_skip, c_out, c_in) of f(x, s) = c_skip x + c_out F(c_in x, c_noise); c_skip(smin)=1."""
    sigma = jnp.asarray(sigma, jnp.float32)
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (sigma - sigma_min) / jnp.sqrt(sigma**2 + sigma_data**2)
    c_in = 1.0 / jnp.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out, c_in


def noise_conditioning(sigma: jax.Array, scale: float = 1.0) -> jax.Array:
    """c_noise = scale * 0.25 ln(sigma): scale 1 for NCSN++'s Fourier, 1000 for ADM."""
    return scale * 0.25 * jnp.log(jnp.asarray(sigma, jnp.float32))
