"""Flow matching and its training-free conversion into a TrigFlow teacher (SANA-Sprint),
against closed forms on Gaussian data x0 ~ N(0, V), where the exact flow velocity is
v*(x, t) = (t - (1 - t) V) / ((1 - t)^2 V + t^2) x and the flow ODE carries e to sqrt(V) e."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmjax.models import build_model
from cmjax.objectives import SCD, Flow
from cmjax.objectives.base import Frozen, FrozenNetwork
from cmjax.objectives.flow import flow_to_trigflow, trigflow_velocity_from_flow

V = 1.7
SCALE = 1000.0  # SANA's flow models see 1000 t: the conversion must pass it through


def exact_velocity(variables, x, c_noise, labels, train, rngs=None):
    del variables, labels, train, rngs
    t = (c_noise / SCALE)[:, None]
    return (t - (1 - t) * V) / ((1 - t) ** 2 * V + t**2) * x


def mlp_velocity():
    """A random MLP flow model (not the exact one: the conversion holds for any field), smooth
    in its time input 1000 t (Fourier scale 1e-3) so that RK4 integrates it accurately."""
    model = build_model(
        {"name": "mlp", "hidden": 32, "depth": 2, "num_fourier": 8, "fourier_scale": 1e-3}
    )
    x = jnp.zeros((1, 2))
    params = model.init(jax.random.key(4), x, jnp.zeros((1,)), None, False)["params"]
    return lambda variables, *a, **k: model.apply({"params": params}, *a, **k)


def rk4(f, x, t0, t1, n):
    """Classical RK4 from t0 to t1 in n steps (one compiled loop)."""
    h = (t1 - t0) / n

    def body(i, x):
        t = t0 + i * h
        k1 = f(x, t)
        k2 = f(x + h / 2 * k1, t + h / 2)
        k3 = f(x + h / 2 * k2, t + h / 2)
        k4 = f(x + h * k3, t + h)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    return jax.jit(lambda x: jax.lax.fori_loop(0, n, body, x))(x)


def flow_teacher(apply) -> Frozen:
    flow = Flow(noise_cond_scale=SCALE)
    return Frozen(FrozenNetwork(flow, types.SimpleNamespace(apply=apply), (2,), 0), {})


@pytest.mark.parametrize("field", ["exact", "mlp"])
@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_the_trigflow_ode_of_a_converted_flow_teacher_ends_where_the_flow_ode_does(
    field, sigma_data
):
    """sCD's teacher velocity (``SCD.dxdt`` on a flow teacher), integrated from theta = pi/2
    at sd e to 0, reaches the flow ODE's endpoint from e (t = 1 -> 0), for any flow field;
    for the exact Gaussian field both are sqrt(V) e."""
    apply = exact_velocity if field == "exact" else mlp_velocity()
    teacher = flow_teacher(apply)
    scd = SCD(teacher="flow", sigma_data=sigma_data)
    e = jax.random.normal(jax.random.key(0), (16, 2))
    b = e.shape[0]

    def flow_field(x, t):
        return teacher.objective.velocity(apply, {}, x, jnp.full((b,), t))

    def trig_field(x, theta):
        th = jnp.full((b,), theta)
        return scd.dxdt(None, {"teacher": teacher}, None, None, x, th, None)

    flow_end = rk4(flow_field, e, 1.0, 0.0, 400)
    trig_end = rk4(trig_field, sigma_data * e, math.pi / 2, 0.0, 400)
    np.testing.assert_allclose(np.asarray(trig_end), np.asarray(flow_end), atol=2e-5)
    if field == "exact":
        np.testing.assert_allclose(np.asarray(flow_end), math.sqrt(V) * np.asarray(e), atol=2e-5)


def test_the_conversion_at_unit_sigma_data_is_sana_sprints_formula():
    """With sd = 1: t = sin / (sin + cos), x_flow = x sqrt(t^2 + (1 - t)^2),
    F = ((1 - 2t) x_flow + (1 - 2t + 2t^2) v) / sqrt(t^2 + (1 - t)^2) (SanaMSCM.forward)."""
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(k1, (64, 3))
    v = jax.random.normal(k2, (64, 3))
    theta = jax.random.uniform(k3, (64,), minval=0.01, maxval=math.pi / 2 - 0.01)
    x_flow, t, _ = flow_to_trigflow(x, theta, 1.0)
    ours = trigflow_velocity_from_flow(v, x_flow, t, theta, 1.0)
    s, c = np.sin(np.float64(theta)), np.cos(np.float64(theta))
    t64 = s / (s + c)
    norm = np.sqrt(t64**2 + (1 - t64) ** 2)[:, None]
    xf64 = np.float64(x) * norm
    sana = ((1 - 2 * t64[:, None]) * xf64 + (1 - 2 * t64 + 2 * t64**2)[:, None] * v) / norm
    np.testing.assert_allclose(np.asarray(t), t64, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(x_flow), xf64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours), sana, rtol=1e-4, atol=1e-5)


def test_the_flow_sampler_reaches_the_exact_endpoint_on_gaussian_data():
    """Euler along the exact field from e over 2,000 steps: sqrt(V) e to 0.2% (measured 0.07%)."""
    flow = Flow(noise_cond_scale=SCALE)
    shape = (32, 2)
    out = flow.sample(exact_velocity, {}, jax.random.key(3), shape, flow.plan(2000))
    e = jax.random.normal(jax.random.key(3), shape)
    np.testing.assert_allclose(np.asarray(out), math.sqrt(V) * np.asarray(e), rtol=2e-3)


def test_the_flow_loss_at_the_exact_velocity_is_the_irreducible_variance():
    """E ||v* - (e - x0)||^2 / D over logit-normal t is E_t Var(e - x0 | x_t), with
    Var = 1 + V - (t - (1 - t) V)^2 / ((1 - t)^2 V + t^2) (quadrature here); 400,000 draws
    of ``Flow.loss`` agree within 1%."""
    flow = Flow(noise_cond_scale=SCALE)
    x = math.sqrt(V) * jax.random.normal(jax.random.key(5), (400_000, 1))
    loss, _ = flow.loss({}, exact_velocity, x, None, jax.random.key(6), jnp.int32(0))
    z = np.linspace(-8, 8, 20001)
    t = 1 / (1 + np.exp(-z))
    var = 1 + V - (t - (1 - t) * V) ** 2 / ((1 - t) ** 2 * V + t**2)
    expected = np.trapezoid(var * np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi), z)
    assert float(jnp.mean(loss)) == pytest.approx(expected, rel=1e-2)
