"""ECT (Geng et al. 2024): the mapping function r(t), the x0 target at r = 0, the two
parametrizations and the loss against independent float64 computations, and one compiled
step across curriculum stages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import dataset

from cmjax import create_train_state, make_train_step
from cmjax.config.hparams import TrainHParams
from cmjax.config.loading import load_config
from cmjax.errors import ConfigError
from cmjax.objectives import ECT, EDM
from cmjax.objectives.ect import IMAGENET64, ect_stage, mapping_gap, mapping_r

SD = 0.5


def r64(t: float, step: int, q=2.0, d=25_000, k=8.0, b=1.0) -> float:
    """The mapping function in float64, written from the paper/official ECMLoss."""
    stage = step // d
    ratio = 1.0 - q ** -(stage + 1) * (1.0 + k / (1.0 + np.exp(b * t)))
    return max(0.0, t * ratio)


# (t, iteration) -> r, CIFAR-10 constants (q = 2, d = 25k, k = 8, b = 1). Stage 0: r = 0 up to
# t = ln 7 (where 0.5 (1 + 8 sigmoid(-t)) = 1); r -> t (1 - 2^-(s+1)) for large t.
POINTS = [
    (0.01, 0),
    (1.9, 0),
    (2.0, 0),
    (80.0, 0),
    (0.5, 24_999),
    (0.5, 25_000),
    (0.05, 75_000),
    (1.0, 150_000),
    (10.0, 399_999),
    (80.0, 399_999),
]


def test_mapping_function_at_pinned_points():
    t = jnp.asarray([p[0] for p in POINTS], jnp.float32)
    steps = jnp.asarray([p[1] for p in POINTS], jnp.int32)
    stage = ect_stage(steps, 25_000)
    np.testing.assert_array_equal(np.asarray(stage), [0, 0, 0, 0, 0, 1, 3, 6, 15, 15])
    got = np.asarray(mapping_r(t, stage, 2.0, 8.0, 1.0))
    want = np.array([r64(tt, s) for tt, s in POINTS])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    assert got[0] == got[1] == 0.0 and got[2] > 0  # stage 0: r = 0 below t = ln 7 = 1.9459
    # The gap t - r keeps its relative precision late in training (stage 15: 2^-16 t a(t)).
    gap = np.asarray(mapping_gap(t, stage, 2.0, 8.0, 1.0))
    want_gap = np.array([tt - r64(tt, s) for tt, s in POINTS])
    np.testing.assert_allclose(gap, want_gap, rtol=1e-5)
    # The 1-GPU-hour recipe: q = 256, stage 0.
    t256 = np.array([0.02, 0.5, 3.0, 80.0])
    got256 = np.asarray(mapping_r(jnp.asarray(t256, jnp.float32), jnp.int32(0), 256.0, 8.0, 1.0))
    np.testing.assert_allclose(got256, [r64(x, 0, q=256.0) for x in t256], rtol=2e-6)


def _net(variables, x_in, c_noise, labels, train, rngs=None):
    """A fixed nonlinear F(c_in x, c_noise) with parameters (so gradients exist)."""
    w = variables["params"]["w"]
    h = jnp.tanh(x_in @ w + c_noise[:, None])
    if train:  # a dropout-like mask from the key: the same key must give the same mask
        keep = jax.random.bernoulli(rngs["dropout"], 0.8, h.shape)
        h = jnp.where(keep, h / 0.8, 0.0)
    return h @ w.T


def _f64(w, x, t, mask, sigma_min=0.0):
    """f(x, t) = c_skip x + c_out F(c_in x, ln t / 4) in float64 (mask: dropout keep / 0.8)."""
    t = t[:, None]
    c_skip = SD**2 / ((t - sigma_min) ** 2 + SD**2)
    c_out = (t - sigma_min) * SD / np.sqrt(t**2 + SD**2)
    c_in = 1 / np.sqrt(t**2 + SD**2)
    h = np.tanh((c_in * x) @ w + np.log(t) / 4) * mask
    return c_skip * x + c_out * (h @ w.T)


@pytest.mark.parametrize("variant", ["cifar10", "imagenet64"])
def test_loss_matches_an_independent_float64_computation(variant):
    kw = IMAGENET64 if variant == "imagenet64" else {}
    ect = ECT(d=4, total_steps=12, **kw)
    rng_w, rng_x = jax.random.split(jax.random.key(0))
    w = np.asarray(jax.random.normal(rng_w, (6, 6)) * 0.5, np.float64)
    x = np.asarray(jax.random.uniform(rng_x, (64, 6), minval=-1, maxval=1), np.float64)
    # Stages where some rows have r = 0 and others not: CIFAR-10 stage 1, ImageNet stage 0.
    key, step = jax.random.key(11), (5 if variant == "cifar10" else 1)
    loss, metrics = jax.jit(ect.loss, static_argnums=1)(
        {"w": jnp.asarray(w, jnp.float32)}, _net, jnp.asarray(x, jnp.float32), None, key, step
    )
    # The draws, as the objective takes them from its key; everything else in float64.
    k_t, k_noise, k_drop = jax.random.split(key, 3)
    t = np.exp(ect.p_mean + ect.p_std * np.asarray(jax.random.normal(k_t, (64,)), np.float64))
    e = np.asarray(jax.random.normal(k_noise, x.shape), np.float64)
    mask = np.asarray(jax.random.bernoulli(k_drop, 0.8, x.shape), np.float64) / 0.8
    r = np.array([r64(tt, step, q=ect.q, d=4) for tt in t])
    assert 0 < (r == 0).sum() < 64  # both kinds of rows are covered
    student = _f64(w, x + t[:, None] * e, t, mask)
    r_safe = np.where(r > 0, r, 1.0)
    target = np.where((r > 0)[:, None], _f64(w, x + r_safe[:, None] * e, r_safe, mask), x)
    dist = np.sqrt(np.sum((student - target) ** 2, axis=1) + ect.c**2) - ect.c
    weight = 1 / (t - r) if variant == "cifar10" else 1 / t**2 + 1 / SD**2
    np.testing.assert_allclose(np.asarray(loss), weight * dist, rtol=5e-4, atol=1e-6)
    assert float(metrics["stage"]) == step // 4
    np.testing.assert_allclose(float(metrics["r_zero_fraction"]), np.mean(r == 0), rtol=1e-6)


def test_r_zero_gives_the_data_as_target():
    """Stage 0 and every t < ln 7: r = 0 for all rows, so the loss is ||f(x_t, t) - x0|| / t
    whatever the network returns at r (here F = 0: f = c_skip x_t)."""

    def zero_net(variables, x_in, c_noise, labels, train, rngs=None):
        return jnp.zeros_like(x_in) + 0.0 * variables["params"]["w"].sum()

    ect = ECT(p_mean=-3.0, p_std=0.5)
    x = np.linspace(-1, 1, 32 * 4).reshape(32, 4)
    key = jax.random.key(3)
    xj = jnp.asarray(x, jnp.float32)
    loss, metrics = jax.jit(ect.loss, static_argnums=1)(
        {"w": jnp.ones(())}, zero_net, xj, None, key, 0
    )
    k_t, k_noise, _ = jax.random.split(key, 3)
    t = np.exp(-3.0 + 0.5 * np.asarray(jax.random.normal(k_t, (32,)), np.float64))
    assert t.max() < np.log(7.0)
    e = np.asarray(jax.random.normal(k_noise, x.shape), np.float64)
    c_skip = SD**2 / (t**2 + SD**2)
    want = np.linalg.norm(c_skip[:, None] * (x + t[:, None] * e) - x, axis=1) / t
    np.testing.assert_allclose(np.asarray(loss), want, rtol=2e-5)
    assert float(metrics["r_zero_fraction"]) == 1.0


def test_parametrizations_train_is_edm_and_sampling_has_the_sigma_min_offset():
    ect = ECT()
    assert ect.sigma_min == 0.003  # official ECMPrecond (EDM's is 0.002)
    w = {"w": jax.random.normal(jax.random.key(1), (3, 3))}
    x = jax.random.normal(jax.random.key(2), (5, 3))
    sig = jnp.asarray([0.003, 0.01, 0.5, 2.0, 80.0], jnp.float32)

    def net(variables, x_in, c_noise, labels, train, rngs=None):
        return _net(variables, x_in, c_noise, labels, False)

    # Sampling: f(x, sigma_min) = x exactly; training: EDM's denoiser, no offset.
    np.testing.assert_array_equal(
        np.asarray(ect.sample_fn(net, w, x[:1], sig[:1])), np.asarray(x[:1])
    )
    train = ect.train_fn(net, w, x, sig, None, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(train), np.asarray(EDM().denoise(net, w, x, sig)))
    w64, x64, s64 = (np.asarray(a, np.float64) for a in (w["w"], x, sig))
    want = _f64(w64, x64, s64, 1.0, sigma_min=0.003)
    got = np.asarray(ect.sample_fn(net, w, x, sig))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # One step = f(80 z, 80) through the sampling parametrization; two steps at [80, 0.821].
    one = ect.sample(net, w, jax.random.key(7), (4, 3), ect.plan(1))
    keys = jax.random.split(jax.random.key(7), 1)
    z = jax.random.normal(keys[0], (4, 3))
    direct = ect.sample_fn(net, w, 80.0 * z, jnp.full((4,), 80.0))
    np.testing.assert_allclose(np.asarray(one), np.asarray(direct), rtol=1e-6)
    assert ect.plan(2).times == (80.0, 0.821) and ect.plan(2).nfe == 2


def test_configs_and_errors():
    hp = TrainHParams.from_config(load_config("default:ect"))
    ect = hp.objective
    assert (ect.p_mean, ect.p_std, ect.q, ect.k, ect.b, ect.c) == (-1.1, 2.0, 2.0, 8.0, 1.0, 0.0)
    assert ect.plan(2).times == (80.0, 0.821)
    config = load_config("toy2d:ect")
    config.objective.q = 256.0
    config.objective.d = 100
    with pytest.raises(ConfigError, match="float32 resolution"):
        TrainHParams.from_config(config)  # 2,000 steps reach stage 19: 256^-20 underflows r-t
    config = load_config("toy2d:ect")
    config.objective.weighting = "uniform"
    with pytest.raises(ConfigError, match="weighting"):
        TrainHParams.from_config(config)


def test_one_compilation_across_stages():
    """d = 2: 8 steps cross stages 0 -> 3 inside one compiled step."""
    config = load_config("toy2d:two_moons,ect")
    config.model.update(hidden=16, depth=1)
    config.objective.d = 2
    config.training.update(total_steps=8, batch_size=32)
    traces = []
    raw = make_train_step(config)

    def counted(state, batch):
        traces.append(1)
        return raw(state, batch)

    step = jax.jit(counted)
    state = create_train_state(config, jax.random.key(0))
    data = dataset(config)
    stages = []
    for k in range(8):
        state, metrics = step(state, data.batch(k))
        stages.append(float(metrics["stage"]))
        assert np.isfinite(float(metrics["loss"]))
    assert stages == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(traces) == 1


def test_cifar10_recipes():
    ect = load_config("cifar10_ect")
    assert ect.model.name == "ddpmpp" and ect.model.dropout == 0.2
    assert (ect.model.model_channels, tuple(ect.model.channel_mult), ect.model.num_blocks) == (
        128,
        (2, 2, 2),
        4,
    )
    assert (ect.training.batch_size, ect.training.total_steps) == (128, 400_000)
    assert tuple(ect.training.ema_rates) == (0.9999,)
    assert (ect.optim.name, ect.optim.learning_rate) == ("radam", 1e-4)
    assert (ect.objective.q, ect.objective.d, ect.sampling.two_step_sigma) == (2.0, 25_000, 0.821)
    hour = load_config("cifar10_ect:1gpuhour")
    assert hour.objective.q == 256.0 and tuple(hour.training.ema_rates) == (0.9993,)
    assert hour.training.total_steps * hour.training.batch_size == 1_024_000  # 80 ticks
    assert TrainHParams.from_config(hour).objective.d > hour.training.total_steps  # stage 0
    edm = load_config("cifar10_edm")
    assert (edm.training.batch_size, edm.optim.name, edm.optim.learning_rate) == (512, "adam", 1e-3)
    assert edm.training.total_steps == 390_625 and edm.model.dropout == 0.13
    # EMA half-life 0.5 M images at batch 512.
    assert edm.training.ema_rates[0] ** (500_000 / 512) == (pytest.approx(0.5))
    # The tiny variants share one network, so cifar10_ect:tiny can init_from cifar10_edm:tiny.
    shapes = [
        jax.tree.map(
            lambda a: a.shape,
            jax.eval_shape(lambda r, c=c: create_train_state(c, r), jax.random.key(0)).params,
        )
        for c in (load_config("cifar10_edm:tiny"), load_config("cifar10_ect:tiny"))
    ]
    assert shapes[0] == shapes[1]
