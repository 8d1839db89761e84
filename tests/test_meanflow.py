"""MeanFlow (Geng et al. 2025): the jvp target and adaptive loss against independent float64
computations, the jvp against central differences on real networks, the exact Gaussian
average velocity as a fixed point of the target, the (t, r) sampler's statistics, samplers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmjax.config.hparams import TrainHParams
from cmjax.config.loading import load_config
from cmjax.models import build_model
from cmjax.objectives import MeanFlow
from cmjax.objectives.meanflow import sample_t_r

# -- an analytic network: u(z, a, b) with a = scale t, b = scale h received as inputs -------
G = np.array([0.3, -0.7, 1.1])
C1 = np.array([0.5, 0.2, -0.4])
C2 = np.array([-1.3, 0.6, 0.9])
W = np.array([[0.8, -0.2, 0.1], [0.3, 0.5, -0.6], [0.0, 0.4, 1.2]])


def poly_net(variables, z, a, labels, train, h=None, rngs=None):
    """u = z W + a^2 C1 + a b C2 + b (z * G) + b^2 z^2 * G, elementwise where it says so."""
    del variables, labels, train, rngs
    b = h
    a_, b_ = a[:, None], b[:, None]
    return z @ W + a_**2 * C1 + a_ * b_ * C2 + b_ * z * G + b_**2 * z**2 * G


def poly_u_and_dudt(z, v, t, r, scale):
    """float64 u and du/dt along (dz, dt, dr) = (v, 1, 0), by hand: da = scale, db = scale."""
    a, b = (scale * t)[:, None], (scale * (t - r))[:, None]
    u = z @ W + a**2 * C1 + a * b * C2 + b * z * G + b**2 * z**2 * G
    du = (
        v @ W
        + 2 * a * scale * C1
        + (scale * b + a * scale) * C2
        + scale * z * G
        + b * v * G
        + 2 * b * scale * z**2 * G
        + b**2 * 2 * z * v * G
    )
    return u, du


def test_target_and_loss_match_float64_reference():
    """The whole ``loss`` on its own draws (t, r, e reproduced from its documented key split)
    equals err / (err + c)^p with u_tgt = v - clip(t - r) du/dt computed by hand in float64;
    noise_cond_scale 2 checks that both time inputs are scaled."""
    mf = MeanFlow(noise_cond_scale=2.0)
    x = np.asarray(jax.random.normal(jax.random.key(1), (16, 3)), np.float64) * 0.7
    rng = jax.random.key(4)
    loss, metrics = mf.loss({}, poly_net, jnp.asarray(x, jnp.float32), None, rng, jnp.int32(0))
    k_tr, k_noise, _ = jax.random.split(rng, 3)
    t, r = (np.asarray(a, np.float64) for a in mf.draw_t_r(k_tr, 16))
    e = np.asarray(jax.random.normal(k_noise, x.shape, jnp.float32), np.float64)
    assert (r == t).sum() == 4 and np.all(r[:4] == t[:4]) and np.all(r[4:] < t[4:])
    z = (1 - t[:, None]) * x + t[:, None] * e
    v = e - x
    u, du = poly_u_and_dudt(z, v, t, r, 2.0)
    u_tgt = v - np.clip(t - r, 0, 1)[:, None] * du
    err = np.sum((u - u_tgt) ** 2, axis=1)
    want = err / (err + 1e-3) ** 0.75
    assert loss.dtype == jnp.float32 and loss.shape == (16,)
    np.testing.assert_allclose(np.asarray(loss), want, rtol=2e-4)
    np.testing.assert_allclose(float(metrics["meanflow_err"]), err.mean(), rtol=2e-4)
    np.testing.assert_allclose(float(metrics["v_err"]), np.sum((u - v) ** 2, 1).mean(), rtol=2e-4)


def test_gradient_flows_through_u_only():
    """d loss / d params = (1 / sg(w)) 2 (u - u_tgt) du/dparams: the target is constant."""
    mf = MeanFlow()

    def net(variables, z, a, labels, train, h=None, rngs=None):
        return variables["params"]["k"] * (z + a[:, None] * h[:, None])

    x = jnp.ones((4, 2))
    t, r = jnp.array([0.9, 0.5, 0.3, 0.7]), jnp.array([0.2, 0.5, 0.1, 0.0])
    e = jnp.full((4, 2), -0.5)

    def total(k):
        u, u_tgt, _ = mf.target_and_output({"k": k}, net, x, e, t, r, None, None, train=False)
        return jnp.sum(jnp.square(u - u_tgt)), (u, u_tgt)

    g, (u, u_tgt) = jax.grad(total, has_aux=True)(jnp.float32(1.3))
    z = (1 - t[:, None]) * x + t[:, None] * e
    du_dk = z + (t * (t - r))[:, None]
    np.testing.assert_allclose(float(g), float(jnp.sum(2 * (u - u_tgt) * du_dk)), rtol=1e-5)


def _gaussian_average_velocity(mu, s):
    """The exact average velocity of the flow for 1-D data N(mu, s^2): the marginal flow maps
    z_t to z_r = (1 - r) mu + A(r) / A(t) (z_t - (1 - t) mu), A(t) = sqrt((1-t)^2 s^2 + t^2);
    u = (z_t - z_r) / (t - r) for t > r. As a network of (z, t, h)."""

    def net(variables, z, t, labels, train, h=None, rngs=None):
        r = t - h
        amp = lambda q: jnp.sqrt((1 - q) ** 2 * s**2 + q**2)  # noqa: E731
        ratio = (amp(r) / amp(t))[:, None]
        z_r = (1 - r)[:, None] * mu + ratio * (z - (1 - t)[:, None] * mu)
        return (z - z_r) / h[:, None]

    return net


def test_exact_average_velocity_is_a_fixed_point_of_the_target():
    """With the exact u of Gaussian data and v the *marginal* velocity at z_t (x, e set to
    their posterior means), the MeanFlow identity gives u_tgt = u: checks the jvp's tangents
    (v, 1, 0), h = t - r and the sign of the correction together."""
    mu, s = 0.3, 0.5
    mf = MeanFlow()
    t = jnp.array([0.9, 0.6, 0.95, 0.4, 0.2], jnp.float32)
    r = jnp.array([0.1, 0.3, 0.0, 0.35, 0.05], jnp.float32)
    z = jnp.linspace(-2.0, 2.0, 5)[:, None]
    tb = t[:, None]
    x_mean = mu + (1 - tb) * s**2 / ((1 - tb) ** 2 * s**2 + tb**2) * (z - (1 - tb) * mu)
    e_mean = (z - (1 - tb) * x_mean) / tb
    net = _gaussian_average_velocity(mu, s)
    u, u_tgt, _ = mf.target_and_output({}, net, x_mean, e_mean, t, r, None, None, train=False)
    np.testing.assert_allclose(np.asarray(u_tgt), np.asarray(u), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampler_with_the_exact_average_velocity_is_exact(steps):
    """Any plan maps e to mu + s e exactly when u is the exact average velocity; 1 step is
    x = e - u(e, 1, 1) (t = 1, r = 0)."""
    mu, s = 0.3, 0.5
    mf = MeanFlow()
    plan = mf.plan(steps)
    assert plan.nfe == steps and plan.times[0] == 1.0
    key = jax.random.key(2)
    out = mf.sample(_gaussian_average_velocity(mu, s), {}, key, (1000, 1), plan)
    e = jax.random.normal(key, (1000, 1))
    np.testing.assert_allclose(np.asarray(out), np.asarray(mu + s * e), rtol=1e-5, atol=1e-5)


def test_plans():
    mf = MeanFlow(two_step_time=0.4)
    assert mf.plan().times == (1.0,)
    assert mf.plan(2).times == (1.0, 0.4)
    assert mf.plan(4).times == (1.0, 0.75, 0.5, 0.25)
    assert mf.plan(times=[1.0, 0.3]).nfe == 2
    assert set(mf.sampler_plans()) == {"1step", "2step"}
    with pytest.raises(ValueError, match="decreasing"):
        mf.plan(times=[0.3, 1.0])
    with pytest.raises(ValueError, match=r"\(0.0, 1.0\]"):
        mf.plan(times=[1.5])
    with pytest.raises(ValueError, match="meanflow"):
        mf.plan(1, method="heun")


@pytest.mark.parametrize("equal_rows", ["position", "random"])
def test_t_r_sampler_statistics(equal_rows):
    """t >= r everywhere; r = t on 25% of rows (exactly, the first ones, for "position";
    within 5 standard errors for "random"); logit(t), logit(r) on rows r != t have the
    moments of the max / min of two N(m, s^2): m +- s / sqrt(pi), variance s^2 (1 - 1/pi),
    within 5 standard errors."""
    n, m, s = 200_000, -2.0, 2.0
    kw = dict(p_mean_t=m, p_std_t=s, p_mean_r=m, p_std_r=s, ratio=0.75, equal_rows=equal_rows)
    t, r = (np.asarray(a, np.float64) for a in sample_t_r(jax.random.key(0), n, **kw))
    assert np.all(t >= r) and np.all((t > 0) & (t < 1))
    equal = r == t
    if equal_rows == "position":
        assert equal.sum() == n // 4 and equal[: n // 4].all()
    else:
        assert abs(equal.mean() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)
    differ = ~equal
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    lt, lr = logit(t[differ]), logit(r[differ])
    var = s**2 * (1 - 1 / math.pi)
    se = math.sqrt(var / differ.sum())
    assert abs(lt.mean() - (m + s / math.sqrt(math.pi))) < 5 * se
    assert abs(lr.mean() - (m - s / math.sqrt(math.pi))) < 5 * se
    assert abs(lt.var() / var - 1) < 5 * math.sqrt(2 / differ.sum()) * 1.5
    assert abs(logit(t).mean() - (m + s / math.sqrt(math.pi))) < 5 * math.sqrt(var / n)


TINY_NETS = {
    "mlp": dict(name="mlp", hidden=16, depth=2, num_fourier=8),
    "unet_small": dict(
        name="unet_small", channels=8, channel_mult=(1, 2), num_fourier=8, fourier_scale=1.0
    ),
    "ddpmpp": dict(
        name="ddpmpp",
        model_channels=8,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
        dtype="float64",
    ),
}


# The objective's tangent on the MLP, the small UNet and DDPM++ (the CIFAR-10 network), each
# with h; jvp through NCSN++ and ADM (attention included) is checked against float64 central
# differences in tests/test_sct.py, so compiling them here again would add nothing.
@pytest.mark.parametrize("name", sorted(TINY_NETS))
def test_jvp_matches_central_difference(name):
    """The target's du/dt (from one jax.jvp) equals a Richardson-extrapolated central
    difference of u(z, t, t - r) along (v, 1, 0), computed in float64 (eps 0.005 and 0.0025:
    truncation O(eps^4); some networks round their input to float32, which bounds the
    agreement near 1e-5 of the derivative's scale), on each network with h enabled. The
    parameters are perturbed so that zero-initialized output layers hide nothing."""
    model = build_model({**TINY_NETS[name], "second_time_input": True})
    shape = (3, 2) if name == "mlp" else (3, 8, 8, 2)
    mf = MeanFlow(noise_cond_scale=1.0)
    with jax.enable_x64(True):
        params = jax.jit(model.init)({"params": jax.random.key(0)}, jnp.zeros(shape), jnp.zeros(3))
        params = jax.tree.map(
            lambda p: (p + 0.05 * jnp.sin(jnp.arange(p.size) * 1.7).reshape(p.shape)).astype(
                jnp.float64
            ),
            params["params"],
        )
        x = jax.random.normal(jax.random.key(1), shape, jnp.float64)
        e = jax.random.normal(jax.random.key(2), shape, jnp.float64)
        t = jnp.array([0.9, 0.5, 0.3], jnp.float64)
        r = jnp.array([0.2, 0.5, 0.05], jnp.float64)

        @jax.jit
        def run(params):
            u, u_tgt, v = mf.target_and_output(params, model.apply, x, e, t, r, None, None, False)
            tb = t.reshape((-1,) + (1,) * (x.ndim - 1))
            z = (1 - tb) * x + tb * e

            def central(eps):
                up = mf.average_velocity(model.apply, params, z + eps * v, t + eps, r)
                down = mf.average_velocity(model.apply, params, z - eps * v, t - eps, r)
                return (up - down) / (2 * eps)

            fd = (4 * central(0.0025) - central(0.005)) / 3
            return u, u_tgt, v - (t - r).reshape(tb.shape) * fd, fd

        u, u_tgt, want, fd = run(params)
        assert u.dtype == jnp.float64
        scale = float(jnp.abs(fd).max())
        assert scale > 1e-2
        np.testing.assert_allclose(np.asarray(u_tgt), np.asarray(want), atol=1e-4 * scale)


def test_configs():
    toy = TrainHParams.from_config(load_config("toy2d:two_moons,meanflow")).objective
    assert isinstance(toy, MeanFlow)
    assert (toy.p_mean_t, toy.p_std_t, toy.p_mean_r, toy.p_std_r) == (-2.0, 2.0, -2.0, 2.0)
    assert (toy.ratio, toy.norm_p, toy.norm_eps, toy.equal_rows) == (0.75, 0.75, 1e-3, "position")
    digits = load_config("default:tiny,meanflow")
    assert digits.model.second_time_input and digits.model.name == "unet_small"
    cifar = load_config("cifar10_meanflow")
    assert cifar.model.name == "ddpmpp" and cifar.model.second_time_input
    assert (cifar.optim.name, cifar.optim.learning_rate, cifar.training.batch_size) == (
        "adam",
        6e-4,
        1024,
    )
    assert cifar.model.dropout == 0.2 and cifar.training.ema_rates[0] == 0.9999


def test_bf16_compute_keeps_a_float32_loss_close_to_float32():
    """A tiny DDPM++ in bfloat16: the loss stays float32 and finite, within 10% of the f32 one."""
    mf = MeanFlow()
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 2), minval=-1, maxval=1)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        spec = {**TINY_NETS["ddpmpp"], "dtype": dtype, "second_time_input": True}
        model = build_model(spec)
        params = jax.jit(model.init)({"params": jax.random.key(1)}, x, jnp.zeros(4))["params"]
        params = jax.tree.map(
            lambda p: p + 0.02 * jnp.sign(jnp.sin(jnp.arange(p.size))).reshape(p.shape), params
        )
        fn = jax.jit(lambda p, x, m=model: mf.loss(p, m.apply, x, None, jax.random.key(3), 0))
        loss, metrics = fn(params, x)
        assert loss.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(loss)))
        assert all(np.isfinite(float(m)) for m in metrics.values())
        losses[dtype] = np.asarray(loss)
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.1)
