"""EDM diffusion: preconditioning, loss weight and the Heun sampler against independent
float64 computations (Karras et al. 2022, Table 1 and Algorithm 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmjax.config.hparams import TrainHParams
from cmjax.config.loading import load_config
from cmjax.objectives import EDM
from cmjax.objectives.edm import edm_loss_weight, karras_sampling_grid

SD = 0.5


def test_preconditioning_and_loss_weight_match_edm_table_1():
    edm = EDM()
    sigma = np.array([0.002, 0.1, 0.5, 1.0, 80.0])
    x = np.linspace(-1.0, 1.0, 5 * 3).reshape(5, 3)

    def net(variables, x_in, c_noise, labels, train, rngs=None):
        return 0.7 * x_in + c_noise[:, None]  # F(c_in x, c_noise): any fixed function

    got = edm.denoise(net, {}, jnp.asarray(x, jnp.float32), jnp.asarray(sigma, jnp.float32))
    c_skip = SD**2 / (sigma**2 + SD**2)
    c_out = sigma * SD / np.sqrt(sigma**2 + SD**2)
    c_in = 1 / np.sqrt(sigma**2 + SD**2)
    c_noise = np.log(sigma) / 4
    want = c_skip[:, None] * x + c_out[:, None] * (0.7 * c_in[:, None] * x + c_noise[:, None])
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=2e-6)
    lam = edm_loss_weight(jnp.asarray(sigma), SD)
    np.testing.assert_allclose(np.asarray(lam), (sigma**2 + SD**2) / (sigma * SD) ** 2, rtol=1e-6)
    # lambda(sigma) = 1 / c_out^2: EDM's "effective weight" is 1 on the network output.
    np.testing.assert_allclose(np.asarray(lam) * c_out**2, 1.0, rtol=1e-5)


def test_config_constants_and_grid():
    config = load_config("toy2d:edm")
    edm = TrainHParams.from_config(config).objective
    assert (edm.p_mean, edm.p_std, edm.sigma_data) == (-1.2, 1.2, 0.5)
    plan = edm.plan(18)
    assert plan.method == "heun" and plan.nfe == 35 and len(plan.times) == 18
    rho = 7.0
    i = np.arange(18)
    want = (80 ** (1 / rho) + i / 17 * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    np.testing.assert_allclose(plan.times, want, rtol=1e-12)
    assert karras_sampling_grid(18, 0.002, 80.0, 7.0)[-1] == pytest.approx(0.002)
    assert edm.plan(18, method="euler").nfe == 18
    with pytest.raises(ValueError, match="heun"):
        edm.plan(18, method="rk4")


def _oracle_net(mu: float, s: float):
    """The raw network F whose preconditioned output is the exact denoiser of N(mu, s^2):
    D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)."""

    def net(variables, x_in, c_noise, labels, train, rngs=None):
        sigma = jnp.exp(4.0 * c_noise)[:, None]
        x = x_in * jnp.sqrt(sigma**2 + SD**2)
        d = mu + s**2 / (s**2 + sigma**2) * (x - mu)
        c_skip = SD**2 / (sigma**2 + SD**2)
        c_out = sigma * SD / jnp.sqrt(sigma**2 + SD**2)
        return (d - c_skip * x) / c_out

    return net


def _numpy_solver(x_t, times, mu, s, heun):
    """EDM Algorithm 1 in float64 with the exact denoiser, written independently."""
    t = np.append(np.asarray(times, np.float64), 0.0)
    x = x_t.astype(np.float64)

    def slope(x, sig):
        return (x - (mu + s**2 / (s**2 + sig**2) * (x - mu))) / sig

    for a, b in zip(t[:-1], t[1:], strict=True):
        d = slope(x, a)
        x_next = x + (b - a) * d
        if heun and b > 0:
            x_next = x + (b - a) * 0.5 * (d + slope(x_next, b))
        x = x_next
    return x


def test_heun_with_the_exact_denoiser_matches_float64_and_beats_euler():
    """Data N(0.3, 0.4^2) and its exact denoiser: cmjax's Heun/Euler equal an independent
    float64 solver; Heun's 18 steps are 2.7x closer to the exact ODE solution than Euler's."""
    mu, s = 0.3, 0.4
    edm = EDM()
    net = _oracle_net(mu, s)
    key = jax.random.key(0)
    shape = (4000, 2)
    x_t = 80.0 * np.asarray(jax.random.normal(key, shape), np.float64)
    # The exact ODE solution of this linear problem: x_0 = mu + s / sqrt(s^2 + T^2) (x_T - mu).
    exact = mu + s / np.sqrt(s**2 + 80.0**2) * (x_t - mu)
    errors = {}
    for method in ("heun", "euler"):
        plan = edm.plan(18, method=method)
        got = np.asarray(edm.sample(net, {}, key, shape, plan), np.float64)
        want = _numpy_solver(x_t, plan.times, mu, s, heun=method == "heun")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        errors[method] = np.abs((got - mu) / (exact - mu) - 1).max()
    # Measured: relative error of the contraction factor 0.059 (Heun) vs 0.158 (Euler).
    assert errors["heun"] < 0.07 and errors["euler"] > 2.5 * errors["heun"], errors
