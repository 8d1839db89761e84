"""The iCT schedule pinned to the paper's numbers and to independent float64 computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from cmjax.objectives import ict_schedule as ict


@pytest.mark.parametrize(
    "step,expected",
    [
        (0, 11),
        (49_999, 11),
        (50_000, 21),
        (100_000, 41),
        (349_999, 641),
        (350_000, 1281),
        (399_999, 1281),
        (10**9, 1281),
    ],
)
def test_curriculum_matches_paper(step, expected):
    assert ict.curriculum_stage_steps(400_000) == 50_000
    assert int(ict.num_scales(step, 400_000)) == expected


def test_curriculum_traced_step_matches_python():
    steps = jnp.arange(0, 400_000, 997)
    got = jax.jit(jax.vmap(lambda k: ict.num_scales(k, 400_000)))(steps)
    want = [min(10 * 2 ** (int(k) // 50_000), 1280) + 1 for k in steps]
    np.testing.assert_array_equal(np.asarray(got), want)


def _karras_f64(n, smin=0.002, smax=80.0, rho=7.0):
    i = np.arange(n, dtype=np.float64)
    return (smin ** (1 / rho) + i / (n - 1) * (smax ** (1 / rho) - smin ** (1 / rho))) ** rho


def test_karras_grid_endpoints_and_two_step_points():
    sig = np.asarray(ict.karras_sigmas(1281))
    assert sig.shape == (1281,)
    assert sig[0] == np.float32(0.002) and sig[-1] == np.float32(80.0)
    assert np.all(np.diff(sig) > 0)
    assert round(float(sig[492]), 3) == 0.821  # CIFAR-10 two-step intermediate
    assert round(float(sig[571]), 3) == 1.526  # ImageNet 64 two-step intermediate
    np.testing.assert_allclose(sig, _karras_f64(1281), rtol=2e-6)


def test_smallest_grid_step_is_resolved_in_float32():
    sig = np.asarray(ict.karras_sigmas(1281))
    ref = _karras_f64(1281)
    assert np.diff(ref)[0] == pytest.approx(3.9e-5, rel=0.05)
    np.testing.assert_allclose(np.diff(sig)[:5], np.diff(ref)[:5], rtol=1e-3)


@pytest.mark.parametrize("n", [11, 81, 1281])
def test_noise_level_probs_match_float64_numpy(n):
    sig = _karras_f64(n)
    cdf = special.erf((np.log(sig) - (-1.1)) / (np.sqrt(2.0) * 2.0))
    want = np.diff(cdf) / np.sum(np.diff(cdf))
    got = np.asarray(ict.noise_level_probs(ict.karras_sigmas(n)))
    assert got.shape == (n - 1,)
    assert got.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_lognormal_centre_is_minus_1_1():
    # The pair of highest probability straddles exp(Pmean) for a fine grid, not exp(+1.1).
    sig = np.asarray(ict.karras_sigmas(1281))
    p = np.asarray(ict.noise_level_probs(sig))
    density = p / np.diff(np.log(sig))
    mode = np.argmax(density)
    assert sig[mode] <= math.exp(-1.1) <= sig[mode + 1] * 1.01


def test_pair_sampling_follows_probs_on_current_grid():
    sched = ict.NoiseSchedule(total_steps=400_000)
    draws = 200_000
    s, s_next = jax.jit(lambda k, st: ict.sample_sigma_pairs(k, st, draws, sched))(
        jax.random.key(0), jnp.int32(50_000)
    )
    grid = np.asarray(ict.karras_sigmas(21))
    idx = np.argmin(np.abs(np.log(np.asarray(s))[:, None] - np.log(grid)[None, :]), axis=1)
    np.testing.assert_allclose(grid[idx], np.asarray(s), rtol=1e-6)
    np.testing.assert_allclose(grid[idx + 1], np.asarray(s_next), rtol=1e-6)
    assert idx.max() <= 19
    freq = np.bincount(idx, minlength=20) / draws
    p = np.asarray(ict.noise_level_probs(grid))
    se = np.sqrt(p * (1 - p) / draws)
    assert np.all(np.abs(freq - p) < 5 * se + 1e-6)


def test_pair_sampling_compiles_once_across_curriculum():
    traces = []
    sched = ict.NoiseSchedule(total_steps=400_000)

    @jax.jit
    def draw(key, step):
        traces.append(1)
        return ict.sample_sigma_pairs(key, step, 8, sched)

    maxima = []
    for step in (0, 50_000, 200_000, 399_999):
        s, s_next = draw(jax.random.key(1), jnp.int32(step))
        maxima.append(float(s_next.max()))
    assert len(traces) == 1
    assert all(m <= 80.0 for m in maxima)


def test_consistency_scalings_formulas_and_boundary():
    s = jnp.array([0.002, 0.5, 80.0])
    c_skip, c_out, c_in = ict.consistency_scalings(s, 0.5, 0.002)
    s64 = np.array([0.002, 0.5, 80.0])
    np.testing.assert_allclose(c_skip, 0.25 / ((s64 - 0.002) ** 2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_out, 0.5 * (s64 - 0.002) / np.sqrt(s64**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(s64**2 + 0.25), rtol=1e-6)
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0
    np.testing.assert_allclose(ict.noise_conditioning(s), 0.25 * np.log(s64), rtol=1e-6)
    np.testing.assert_allclose(ict.noise_conditioning(s, 1000.0), 250 * np.log(s64), rtol=1e-6)


def test_loss_weight_is_inverse_gap():
    assert float(ict.ict_loss_weight(jnp.float32(1.0), jnp.float32(1.25))) == 4.0


def test_schedule_rejects_bad_constants():
    with pytest.raises(ValueError, match="s0"):
        ict.NoiseSchedule(s0=20, s1=10)
    with pytest.raises(ValueError, match="sigma_min"):
        ict.NoiseSchedule(sigma_min=90.0)
