"""iLCT switches on the iCT objective (Dao et al. 2025, arXiv 2502.01441), each pinned against
an independent computation; the defaults stay iCT exactly; sharded == unsharded with all on."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import dataset
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from scipy.optimize import linear_sum_assignment

from cmjax import TrainHParams, create_train_state, make_train_step
from cmjax.config.loading import load_config
from cmjax.errors import ConfigError
from cmjax.objectives import ict_schedule as ict
from cmjax.objectives.ot_pairing import ot_pair_noise, ot_permutation
from cmjax.objectives.preconditioning import consistency_fn

ILCT = dict(loss="cauchy", c_schedule="adaptive", diffusion_loss_weight=5.0, ot_pairing=True)


def toy(steps=8, batch=64, **objective):
    config = load_config("toy2d:two_moons")
    config.model.update(hidden=32, depth=2)
    config.training.update(total_steps=steps, batch_size=batch)
    config.objective.update(objective)
    return config


def objective_loss(config, step, seed=3, params_seed=0):
    """(per-example loss, metrics, objective, state, batch, rng) at ``step``."""
    hp = TrainHParams.from_config(config)
    state = create_train_state(config, jax.random.key(params_seed))
    x = dataset(config).batch(0)["x"]
    rng = jax.random.key(seed)
    loss, metrics = hp.objective.loss(state.params, state.apply_fn, x, None, rng, jnp.int32(step))
    return np.asarray(loss, np.float64), metrics, hp.objective, state, x, rng


@pytest.mark.parametrize("n", [21, 41, 1281])
def test_adaptive_c_after_the_first_doubling(n):
    _, _, obj, *_ = objective_loss(toy(**ILCT), 0)
    want = math.exp(-1.15 * math.log(n - 1) - 0.85)  # float64, the paper's formula
    np.testing.assert_allclose(float(obj.loss_scale(jnp.int32(n))), want, rtol=1e-6)
    # Before the curriculum doubles (N = s0 + 1 = 11) the configured c is kept.
    assert float(obj.loss_scale(jnp.int32(11))) == pytest.approx(obj.loss_c, rel=1e-7)
    assert math.exp(-1.15 * math.log(10) - 0.85) == pytest.approx(0.030259, rel=1e-4)


def test_adaptive_c_is_the_c_of_the_cauchy_loss():
    """At a step where N = 21 (K' = 1 at 8 total steps: N doubles every step), the adaptive
    loss equals the fixed-c loss with c = exp(-1.15 ln 20 - 0.85) typed in."""
    n = int(ict.num_scales(1, 8))
    assert n == 21
    c = math.exp(-1.15 * math.log(n - 1) - 0.85)
    adaptive, metrics, *_ = objective_loss(toy(loss="cauchy", c_schedule="adaptive"), 1)
    fixed, *_ = objective_loss(toy(loss="cauchy", loss_c=c), 1)
    np.testing.assert_allclose(adaptive, fixed, rtol=2e-6)
    np.testing.assert_allclose(float(metrics["loss_c"]), c, rtol=1e-6)
    # at step 0 (N = 11, not doubled yet) the default c = 0.00054 sqrt(2) is used
    at0, *_ = objective_loss(toy(loss="cauchy", c_schedule="adaptive"), 0)
    plain0, *_ = objective_loss(toy(loss="cauchy"), 0)
    np.testing.assert_array_equal(at0, plain0)


@pytest.mark.parametrize(("n", "count"), [(11, 3), (21, 5), (1281, 320)])
def test_low_noise_mask_is_the_lowest_quarter_of_the_pairs(n, count):
    idx = jnp.arange(n - 1)
    mask = np.asarray(ict.low_noise_mask(idx, jnp.int32(n), 0.25))
    want = (np.arange(n - 1) < 0.25 * (n - 1)).astype(np.float32)
    np.testing.assert_array_equal(mask, want)
    assert mask.sum() == count and mask[:count].all()  # a prefix: the smallest sigmas


def test_diffusion_loss_term_independently():
    """loss(weight 5) - loss(weight 0) = 5 * mask * (1/s^2 + 1/sd^2) ||f(x + s z, s) - x||^2,
    recomputed from the same pair draw and noise, in float64."""
    step = 2  # N = 41
    on, metrics, obj, state, x, rng = objective_loss(toy(diffusion_loss_weight=5.0), step)
    off, *_ = objective_loss(toy(), step)
    k_sigma, k_noise, _ = jax.random.split(rng, 3)
    n = int(ict.num_scales(step, 8))
    idx, _, s_next = ict.sample_pair_indices(k_sigma, jnp.int32(step), x.shape[0], obj.schedule)
    z = jax.random.normal(k_noise, x.shape, jnp.float32)
    f = consistency_fn(
        state.apply_fn,
        state.params,
        x + s_next[:, None] * z,
        s_next,
        None,
        sigma_data=0.5,
        sigma_min=0.002,
        noise_cond_scale=1.0,
    )
    s = np.asarray(s_next, np.float64)
    err = np.sum((np.asarray(f, np.float64) - np.asarray(x, np.float64)) ** 2, axis=1)
    mask = np.asarray(idx) < 0.25 * (n - 1)
    want = 5.0 * mask * (1 / s**2 + 1 / 0.25) * err
    assert 0 < mask.sum() < len(mask)
    np.testing.assert_allclose(on - off, want, rtol=1e-4, atol=1e-5)
    assert "diffusion_loss" in metrics


def test_ot_pairing_is_the_exact_assignment():
    rng = np.random.default_rng(0)
    for b, d in ((8, 2), (16, 5), (32, 3)):
        x = rng.normal(size=(b, d)).astype(np.float32)
        z = rng.normal(size=(b, d)).astype(np.float32)
        perm = np.asarray(jax.jit(ot_permutation)(x, z))
        assert sorted(perm) == list(range(b))
        cost = ((x[:, None, :].astype(np.float64) - z[None, :, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        assert cost[np.arange(b), perm].sum() == pytest.approx(cost[rows, cols].sum(), rel=1e-6)
        np.testing.assert_array_equal(perm[rows], cols)  # unique optimum for continuous data
        assert cost[np.arange(b), perm].sum() <= np.trace(cost)  # never worse than identity
        np.testing.assert_array_equal(np.asarray(ot_pair_noise(x, z)), z[perm])


def test_ot_pairing_lowers_the_transport_cost_in_the_step():
    """With OT on, the loss sees noise whose total distance to the data is the assignment
    optimum: the per-example loss equals the loss with z replaced by scipy's pairing."""
    config = toy(ot_pairing=True)
    on, _, obj, state, x, rng = objective_loss(config, 1)
    _, k_noise, _ = jax.random.split(rng, 3)
    z = np.asarray(jax.random.normal(k_noise, x.shape, jnp.float32))
    cost = ((np.asarray(x, np.float64)[:, None] - z[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    assert cost[rows, cols].sum() < 0.9 * np.trace(cost)
    # Rerun the plain objective with pre-paired noise by swapping the noise key's output.
    plain = TrainHParams.from_config(toy()).objective
    z_paired = z[cols[np.argsort(rows)]]
    orig_normal = jax.random.normal

    def fixed_normal(key, shape, dtype=jnp.float32):
        return jnp.asarray(z_paired) if tuple(shape) == x.shape else orig_normal(key, shape, dtype)

    jax.random.normal = fixed_normal
    try:
        off, _ = plain.loss(state.params, state.apply_fn, x, None, rng, jnp.int32(1))
    finally:
        jax.random.normal = orig_normal
    np.testing.assert_allclose(on, np.asarray(off, np.float64), rtol=1e-5, atol=1e-7)


def test_defaults_are_ict_exactly():
    base, *_ = objective_loss(toy(), 3)
    explicit, *_ = objective_loss(
        toy(c_schedule="fixed", diffusion_loss_weight=0.0, ot_pairing=False), 3
    )
    np.testing.assert_array_equal(base, explicit)
    with pytest.raises(ConfigError, match="c_schedule"):
        TrainHParams.from_config(toy(c_schedule="cosine"))


def test_sharded_step_equals_single_device_step_with_all_switches():
    config = toy(**ILCT)
    step = make_train_step(config)
    state0 = create_train_state(config, jax.random.key(0))
    data = dataset(config)
    rng = jax.random.key(3)
    s1 = state0
    for k in range(3):
        s1, m1 = jax.jit(step)(s1, data.batch(k), rng)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    repl, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    sharded = jax.jit(step, in_shardings=(repl, shard, repl), out_shardings=(repl, repl))
    s8 = jax.device_put(state0, repl)
    for k in range(3):
        s8, m8 = sharded(s8, jax.device_put(data.batch(k), shard), rng)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(m1["loss"]), float(m8["loss"]), rtol=1e-5)
    assert np.isfinite(float(m1["loss"])) and float(m1["diffusion_loss"]) > 0
