"""TrigFlow, sCT and sCD (Lu & Song 2024, Algorithm 1) against independent computations: the
jvp tangent against float64 finite differences on every network, g and the full loss and its
gradients against float64 numpy, the r = 0 identity with the diffusion gradient, the
samplers with the exact consistency function of a Gaussian, bf16 compute, the sCD teacher."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compiled, dataset, save_run

from cmjax import create_train_state, make_train_step
from cmjax.config.hparams import TrainHParams
from cmjax.config.loading import load_config
from cmjax.errors import CheckpointError, ConfigError
from cmjax.models import build_model
from cmjax.objectives import SCD, SCT, TrigFlow
from cmjax.objectives.scm import network_and_tangent
from cmjax.objectives.trigflow import draw_training_noise, trig_consistency_fn
from cmjax.workdir.frozen import load_frozen
from cmjax.workdir.runs import read_run

SD = 0.5

# Tiny networks (8x8x3 images; attention on at 8x8 so the jvp goes through it; dropout on,
# so the same key must serve primal and tangent). name -> (model section, data shape).
NETWORKS = {
    "mlp": (dict(name="mlp", hidden=32, depth=2, num_fourier=8, dropout=0.3), (4,)),
    "unet_small": (
        # Fourier scale 1: the default 16 makes the float64 central difference itself
        # inaccurate at eps 1e-3 (measured 2.7e-3 relative error).
        dict(
            name="unet_small",
            channels=8,
            channel_mult=(1, 2),
            num_fourier=8,
            fourier_scale=1.0,
            dropout=0.3,
        ),
        (8, 8, 3),
    ),
    "ncsnpp": (
        dict(
            name="ncsnpp",
            nf=8,
            ch_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(8,),
            dropout=0.3,
            fourier_scale=0.02,
            dtype="float64",
        ),
        (8, 8, 3),
    ),
    "adm": (
        dict(
            name="adm",
            model_channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(8,),
            num_head_channels=8,
            norm_groups=8,
            num_classes=0,
            dropout=0.3,
            use_scale_shift_norm=True,
            dtype="float64",
        ),
        (8, 8, 3),
    ),
    "ddpmpp": (
        dict(
            name="ddpmpp",
            model_channels=8,
            channel_mult=(1, 2),
            num_blocks=1,
            attn_resolutions=(8,),
            dropout=0.3,
            dtype="float64",
        ),
        (8, 8, 3),
    ),
}
# Relative (to max |J|) agreement of jvp and central differences, both float64. The MLP and
# small UNet round their input to float32 inside (x.astype(float32)), so their difference
# uses eps = 1e-3 (passes at 1e-4). The paper networks' float64 outputs differ between the
# jvp's primal and a plain apply by ~1e-10 (measured on ADM: different fusion), so eps = 1e-4
# and the same 1e-4; a wrong tangent scale or dropout mask gives errors of order 1.
FD_TOL = {"mlp": 1e-4, "unet_small": 1e-4, "ncsnpp": 1e-4, "adm": 1e-4, "ddpmpp": 1e-4}


def _init(model_cfg, shape, key=0, perturb=0.0):
    """(model, float32 params); ``perturb`` adds N(0, perturb^2) to every parameter so that
    zero-initialized output layers do not make F (and its tangent) identically zero."""
    model = build_model(model_cfg)
    init = build_model(dict(model_cfg, dtype="float32")) if "dtype" in model_cfg else model
    x = jnp.zeros((1, *shape), jnp.float32)
    params = jax.jit(lambda k: init.init({"params": k}, x, jnp.zeros((1,)), None, False))(
        jax.random.key(key)
    )["params"]
    if perturb:
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(key + 1), len(leaves))
        leaves = [
            p + perturb * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)
        ]
        params = jax.tree.unflatten(tree, leaves)
    return model, params


@pytest.mark.parametrize("net", sorted(NETWORKS))
def test_jvp_tangent_equals_float64_central_difference_along_the_ode(net):
    """J = cos t sin t sd dF/dt from one jvp equals (F(x + e dx, t + e dt) - F(x - e dx,
    t - e dt)) / 2e with dx = cos t sin t dxdt, dt = cos t sin t sd, dropout on (one key)."""
    cfg, shape = NETWORKS[net]
    model, params = _init(cfg, shape, perturb=0.05)
    b = 3
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
        k = jax.random.split(jax.random.key(1), 3)
        x_t = jax.random.normal(k[0], (b, *shape), jnp.float64)
        dxdt = jax.random.normal(k[1], (b, *shape), jnp.float64)
        t = jnp.asarray([0.3, 0.9, 1.4], jnp.float64)
        drop = jax.random.key(7)
        kw = dict(sigma_data=SD, noise_cond_scale=1.0)
        f, jvp = jax.jit(
            lambda p, x, t, v: network_and_tangent(model.apply, p, x, t, v, None, drop, **kw)
        )(p64, x_t, t, dxdt)
        assert f.dtype == jnp.float64 and jvp.dtype == jnp.float64
        cs = jnp.cos(t) * jnp.sin(t)
        dx = cs.reshape((b,) + (1,) * len(shape)) * dxdt
        eps = 1e-3 if net in ("mlp", "unet_small") else 1e-4

        @jax.jit
        def along(e):
            x_in = x_t / SD + e * dx
            return model.apply(
                {"params": p64}, x_in, t + e * cs * SD, None, True, rngs={"dropout": drop}
            )

        fd = (np.asarray(along(eps)) - np.asarray(along(-eps))) / (2 * eps)
        np.testing.assert_allclose(np.asarray(f), np.asarray(along(0.0)), rtol=0, atol=1e-8)
    err = np.abs(np.asarray(jvp) - fd).max() / np.abs(fd).max()
    assert err < FD_TOL[net], (net, err)
    assert np.abs(fd).max() > 1e-3  # a tangent that is not trivially zero


def test_consistency_function_at_t_zero_is_the_identity():
    cfg, shape = NETWORKS["mlp"]
    model, params = _init(cfg, shape)
    x = jax.random.normal(jax.random.key(2), (5, *shape))
    out = trig_consistency_fn(
        model.apply, params, x, jnp.zeros((5,)), sigma_data=SD, noise_cond_scale=1.0
    )
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


# --- an analytic network with a numpy twin: F(x_in, c) = tanh(x_in A + c b) ----------------


def _tanh_net(variables, x_in, c_noise, labels, train, rngs=None):
    p = variables["params"]
    return jnp.tanh(x_in @ p["A"] + c_noise[:, None] * p["b"])


def _np_sinusoid(c, dim):
    half = dim // 2
    freqs = np.exp(-math.log(10_000.0) * np.arange(half) / half)
    args = c[:, None] * freqs[None, :]
    return np.concatenate([np.cos(args), np.sin(args)], axis=1)


def test_tangent_loss_and_gradients_match_float64_numpy():
    """Algorithm 1 written out in float64 numpy on fixed draws: g (warmup r = 0.37, tangent
    normalization), e^w/D ||F - sg F - g||^2 - w, and the gradients for A, b and w's Dense."""
    d, b = 4, 6
    sct = SCT(warmup_steps=1000, weight_channels=16, noise_cond_scale=1.0)
    rng = np.random.default_rng(0)
    params = {
        "net": {"A": rng.normal(size=(d, d)) * 0.5, "b": rng.normal(size=(d,))},
        "adaptive_weight": {"kernel": rng.normal(size=(16,)) * 0.3, "bias": np.float64(0.2)},
    }
    params32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    x0 = jnp.asarray(rng.uniform(-1, 1, size=(b, d)), jnp.float32)
    key, step = jax.random.key(4), jnp.asarray(370)

    def total(p):
        loss_b, _ = sct.loss(p, _tanh_net, x0, None, key, step)
        return jnp.mean(loss_b), loss_b

    (_, loss_b), grads = jax.value_and_grad(total, has_aux=True)(params32)
    t, z, _ = draw_training_noise(key, x0, sct.p_mean, sct.p_std, SD)
    t, z, x = (np.asarray(a, np.float64) for a in (t, z, x0))

    A, bb = params["net"]["A"], params["net"]["b"]
    cos, sin = np.cos(t)[:, None], np.sin(t)[:, None]
    x_t = cos * x + sin * z
    dxdt = cos * z - sin * x
    u = x_t / SD @ A + t[:, None] * bb
    F = np.tanh(u)
    du = (cos * sin * dxdt) @ A + (np.cos(t) * np.sin(t) * SD)[:, None] * bb
    J = (1 - F**2) * du
    r = 0.37
    g = -(cos**2) * (SD * F - dxdt) - r * (cos * sin * x_t + J)
    g = g / (np.linalg.norm(g, axis=1, keepdims=True) + 0.1)
    emb = _np_sinusoid(t, 16)
    w = emb @ params["adaptive_weight"]["kernel"] + params["adaptive_weight"]["bias"]
    want = np.exp(w) / d * np.sum(g**2, axis=1) - w
    np.testing.assert_allclose(np.asarray(loss_b), want, rtol=2e-5, atol=2e-6)
    # d/dF of the batch mean: -2 e^w g / (D B); chain rule through tanh.
    dF = -2 * np.exp(w)[:, None] * g / (d * b)
    du_ = dF * (1 - F**2)
    np.testing.assert_allclose(np.asarray(grads["net"]["A"]), (x_t / SD).T @ du_, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(grads["net"]["b"]), t @ du_, rtol=1e-4)
    dw = (np.exp(w) * np.sum(g**2, axis=1) / d - 1) / b
    np.testing.assert_allclose(
        np.asarray(grads["adaptive_weight"]["kernel"]), emb.T @ dw, rtol=1e-4, atol=1e-7
    )
    np.testing.assert_allclose(float(grads["adaptive_weight"]["bias"]), dw.sum(), rtol=1e-4)


def test_with_warmup_zero_sct_gradient_is_a_positive_multiple_of_the_diffusion_gradient():
    """r = 0 (step 0): g = -cos^2 t (sd sg(F) - v_t), so per example
    grad_net L_sCT = e^{w(t)} cos^2 t / (sd (cos^2 t ||sd F - v_t|| + c)) grad_net L_TrigFlow
    with L_TrigFlow = ||sd F - v_t||^2 / D (same t, z and dropout key from the same rng)."""
    cfg, shape = NETWORKS["mlp"]
    model, net = _init(cfg, shape, perturb=0.05)
    trig = TrigFlow()
    sct = SCT(weight_channels=16)
    params = sct.init_params(net, jax.random.key(0))
    params["adaptive_weight"]["bias"] = jnp.asarray(0.4)  # w != 0

    def diffusion(p, x, key):
        return trig.loss(p, model.apply, x, None, key, 0)[0][0]

    def consistency(p, x, key):
        return sct.loss(p, model.apply, x, None, key, 0)[0][0]

    for i in range(3):
        key = jax.random.key(10 + i)
        x = jax.random.uniform(jax.random.key(20 + i), (1, *shape), minval=-1, maxval=1)
        g_diff = jax.jit(jax.grad(diffusion))(net, x, key)
        g_sct = jax.jit(jax.grad(consistency))(params, x, key)["net"]
        t, z, _ = draw_training_noise(key, x, trig.p_mean, trig.p_std, SD)
        v = trig.velocity(model.apply, net, jnp.cos(t) * x + jnp.sin(t) * z, t, None, True, _)
        resid = np.linalg.norm(np.asarray(v - (jnp.cos(t) * z - jnp.sin(t) * x)))
        c2 = float(jnp.cos(t[0]) ** 2)
        factor = math.exp(0.4) * c2 / (SD * (c2 * resid + 0.1))
        a = np.concatenate([np.ravel(u) for u in jax.tree.leaves(g_sct)])
        d = np.concatenate([np.ravel(u) for u in jax.tree.leaves(g_diff)])
        np.testing.assert_allclose(a, factor * d, rtol=2e-3, atol=1e-4 * np.abs(a).max())


def _gaussian_oracle(mu: float, s: float):
    """The raw network F whose consistency function is the exact one of N(mu, s^2) data:
    f(x_t, t) = mu + s / sqrt(s^2 + sigma^2) (x_t / cos t - mu), sigma = sd tan t."""

    def net(variables, x_in, c_noise, labels, train, rngs=None):
        t = c_noise[:, None]
        x_t = x_in * SD
        sigma = SD * jnp.tan(t)
        f = mu + s / jnp.sqrt(s**2 + sigma**2) * (x_t / jnp.cos(t) - mu)
        return (jnp.cos(t) * x_t - f) / (jnp.sin(t) * SD)

    return net


def _gaussian_velocity_oracle(mu: float, s: float):
    """The raw network F of TrigFlow diffusion for N(mu, s^2) data: sd F(x_t/sd, t) =
    E[cos t z - sin t x0 | x_t], the probability-flow velocity (z ~ N(0, sd^2))."""

    def net(variables, x_in, c_noise, labels, train, rngs=None):
        t = c_noise[:, None]
        x_t = x_in * SD
        c, si = jnp.cos(t), jnp.sin(t)
        var = c**2 * s**2 + si**2 * SD**2
        e_x0 = mu + c * s**2 * (x_t - c * mu) / var
        e_z = si * SD**2 * (x_t - c * mu) / var
        return (c * e_z - si * e_x0) / SD

    return net


def test_samplers_with_the_exact_consistency_function_of_a_gaussian():
    """1 and 2 consistency steps give N(mu, s^2) to within 1%; DDIM along the exact velocity
    converges to the exact ODE endpoint at first order (error halves with twice the steps)."""
    mu, s = 0.3, 0.4
    net = _gaussian_oracle(mu, s)
    key, shape = jax.random.key(0), (20000, 2)
    sct = SCT()
    assert sct.t_max == pytest.approx(1.5645, abs=1e-4)
    for steps in (1, 2):
        out = np.asarray(sct.sample(net, {}, key, shape, sct.plan(steps)))
        assert abs(out.mean() - mu) < 0.01 and abs(out.std() - s) < 0.01 * s, (steps, out.std())
    trig = TrigFlow()
    velocity = _gaussian_velocity_oracle(mu, s)  # DDIM follows the diffusion velocity
    x_start = SD * jax.random.normal(key, shape)
    t0 = trig.plan(25).times[0]
    exact = np.asarray(
        trig_consistency_fn(
            net, {}, x_start, jnp.full((shape[0],), t0), sigma_data=SD, noise_cond_scale=1.0
        )
    )
    errs = [
        np.abs(np.asarray(trig.sample(velocity, {}, key, shape, trig.plan(n))) - exact).max()
        for n in (25, 50)
    ]
    # Measured: max error 0.187 (25 steps) -> 0.095 (50 steps), ratio 0.505: first order.
    assert errs[1] < 0.12 and 0.4 < errs[1] / errs[0] < 0.6, errs


def test_loss_is_float32_under_bfloat16_compute():
    cfg = dict(NETWORKS["ddpmpp"][0], dtype="bfloat16", dropout=0.0)
    model, net = _init(cfg, (8, 8, 3))
    cfg32 = dict(cfg, dtype="float32")
    model32 = build_model(cfg32)
    sct = SCT(weight_channels=16)
    params = sct.init_params(net, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3), minval=-1, maxval=1)
    loss16, m16 = sct.loss(params, model.apply, x, None, jax.random.key(2), 20_000)
    loss32, _ = sct.loss(params, model32.apply, x, None, jax.random.key(2), 20_000)
    assert loss16.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(loss16)))
    assert all(np.isfinite(float(v)) for v in m16.values())
    # w = 0 at init: the loss is ||g||^2 / D, g normalized; bf16 moves it by ~1%, not more.
    np.testing.assert_allclose(np.asarray(loss16), np.asarray(loss32), rtol=0.05)


def test_sct_toy_run_has_no_nan_and_the_weight_learns():
    config = load_config("toy2d:two_moons,sct")
    config.model.update(hidden=32, depth=2)
    config.objective.warmup_steps = 40
    config.training.update(total_steps=120, batch_size=128)
    state = create_train_state(config, jax.random.key(0))
    data = dataset(config)
    step = compiled(jax.jit(make_train_step(config), donate_argnums=0), state, data.batch(0))
    history = []
    for k in range(120):
        state, m = step(state, data.batch(k))
        history.append(jax.device_get(m))
    for m in history:
        assert all(np.isfinite(float(v)) for v in m.values()), m
    assert float(history[-1]["warmup"]) == 1.0
    # w(t) moves towards log(D / ||F - sg F - g||^2) > 0: it starts at 0 and grows.
    assert float(history[-1]["adaptive_weight"]) > 0.5


def test_trigflow_config_constants_and_plans():
    hp = TrainHParams.from_config(load_config("toy2d:trigflow"))
    trig = hp.objective
    assert (trig.p_mean, trig.p_std, trig.sigma_data) == (-1.0, 1.4, 0.5)
    plan = trig.plan(18)
    sig = (80 ** (1 / 7) + np.arange(18) / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(plan.times, np.arctan(sig / SD), rtol=1e-12)
    sct = TrainHParams.from_config(load_config("toy2d:sct")).objective
    assert sct.plan(2).times == pytest.approx((math.atan(160.0), 1.1))
    assert sct.plan(times=[1.5, 0.8, 0.3]).nfe == 3
    with pytest.raises(ValueError, match="1 or 2"):
        sct.plan(3)
    # Training times: arctan(e^tau / sd) on a fixed draw, clamped at [1e-4, pi/2 - 1e-4].
    x = jnp.zeros((4096, 2))
    t, _, _ = draw_training_noise(jax.random.key(3), x, -1.0, 1.4, SD)
    k_t = jax.random.split(jax.random.key(3), 3)[0]
    tau = -1.0 + 1.4 * np.asarray(jax.random.normal(k_t, (4096,)), np.float64)
    want = np.clip(np.arctan(np.exp(tau) / SD), 1e-4, np.pi / 2 - 1e-4)
    np.testing.assert_allclose(np.asarray(t), want, rtol=1e-6)


# --- sCD: the frozen teacher ------------------------------------------------------------------


def _scd(teacher: str | None = None, hidden: int = 32):
    config = load_config("toy2d:two_moons,scd")
    config.model.update(hidden=hidden, depth=2)
    config.training.update(total_steps=3, batch_size=64)
    if teacher is not None:
        config.objective.teacher = teacher
    return TrainHParams.from_config(config)


def test_scd_reads_the_teacher_into_frozen_and_never_changes_it(trigflow_teacher):
    workdir = trigflow_teacher(hidden=32, depth=2)
    hp = _scd(workdir)
    state = create_train_state(hp, jax.random.key(0), frozen=load_frozen(hp))
    teacher = read_run(workdir).state.ema_params[0]
    _assert_equal(state.frozen["teacher"], teacher)
    step = jax.jit(make_train_step(hp))
    data = dataset(hp)
    new, m = step(state, data.batch(0))
    assert np.isfinite(float(m["loss"]))
    _assert_equal(new.frozen["teacher"], teacher)
    # dx/dt is the teacher's velocity: another teacher gives another loss.
    other = jax.tree.map(lambda p: p * 1.1, state.frozen)
    _, m2 = step(state.replace(frozen=other), data.batch(0))
    assert float(m2["loss"]) != float(m["loss"])


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_scd_distills_a_teacher_of_another_architecture(trigflow_teacher):
    """The teacher builds its own network from its own saved config: a 16-wide student reads
    a 32-wide teacher, whose velocity (not the student's network) gives dx/dt."""
    hp = _scd(trigflow_teacher(hidden=32, depth=2), hidden=16)
    frozen = load_frozen(hp)
    state = create_train_state(hp, jax.random.key(0), frozen=frozen)
    assert state.frozen["teacher"]["Dense_0"]["kernel"].shape[-1] == 32
    assert state.params["net"]["Dense_0"]["kernel"].shape[-1] == 16
    x, t = jnp.ones((4, 2)) * 0.3, jnp.full((4,), 0.7)
    teacher = frozen["teacher"]
    want = teacher.objective.velocity(teacher.apply_fn, teacher.params, x, t)
    got = hp.objective.dxdt(None, state.nets().frozen, None, None, x, t, None)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    _, m = jax.jit(make_train_step(hp))(state, dataset(hp).batch(0))
    assert np.isfinite(float(m["loss"]))


def test_scd_teacher_errors_are_one_clear_line(trigflow_teacher, tmp_path):
    with pytest.raises(ConfigError, match="config.objective.teacher is not set"):
        load_frozen(_scd())
    with pytest.raises(CheckpointError, match="config.objective.teacher=.* neither a work"):
        load_frozen(_scd(str(tmp_path)))
    not_trigflow = load_config("toy2d:two_moons,ict")
    not_trigflow.model.update(hidden=32, depth=2)
    ict_run = save_run(
        tmp_path / "ict", create_train_state(not_trigflow, jax.random.key(0)), not_trigflow
    )
    with pytest.raises(ConfigError, match="trained with objective 'ict'.*'trigflow'"):
        load_frozen(_scd(ict_run))
    hp = _scd(trigflow_teacher(hidden=32, depth=2))
    with pytest.raises(ConfigError, match="load them once with cmjax.load_frozen"):
        create_train_state(hp, jax.random.key(0))
    assert isinstance(hp.objective, SCD)


@pytest.mark.parametrize(
    "spec, objective, dropout, pstd, batch",
    [
        ("cifar10_sct", "sct", 0.2, 1.4, 512),
        ("cifar10_scd", "scd", 0.0, 1.4, 512),
        ("imagenet64_sct", "sct", 0.45, 1.6, 2048),
    ],
)
def test_paper_configs(spec, objective, dropout, pstd, batch):
    """The constants of docs/objectives.md (sCT and sCD): P_mean/P_std, RAdam 1e-4 (0.9, 0.99),
    dropout, batch, EMA half-life 0.5 M images, tangent warmup 10k, c = 0.1, t_mid = 1.1,
    positional c_noise(t)."""
    config = load_config(spec)
    hp = TrainHParams.from_config(config)
    obj = hp.objective
    assert obj.name == objective and (obj.p_mean, obj.p_std, obj.sigma_data) == (-1.0, pstd, 0.5)
    assert (obj.warmup_steps, obj.tangent_norm_c, obj.two_step_t) == (10_000, 0.1, 1.1)
    assert (hp.optim.name, hp.optim.learning_rate, hp.optim.b1, hp.optim.b2) == (
        "radam",
        1e-4,
        0.9,
        0.99,
    )
    assert config.training.batch_size == batch and config.model.dropout == dropout
    assert hp.ema_rates[0] ** (500_000 / batch) == pytest.approx(0.5)
    assert config.model.time_embedding == "positional" and config.model.noise_cond_scale == 1.0
    assert "init_from" in config
    if spec.startswith("imagenet"):
        assert config.model.dropout_max_resolution == 16
        assert config.model.name == "adm" and config.data.num_classes == 1000
    else:
        assert config.model.name == "ddpmpp"
    trig = TrainHParams.from_config(load_config("cifar10_trigflow")).objective
    assert (trig.name, trig.p_mean, trig.p_std) == ("trigflow", -1.0, 1.4)
