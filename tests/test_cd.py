"""Consistency distillation against closed forms on Gaussian data (x0 ~ N(0, V) in 1-D).

For such data every teacher is known exactly: the EDM denoiser is D(x, t) = V / (V + t^2) x,
the probability-flow ODE is linear, and its consistency function is
f*(x, t) = x sqrt(V + t_min^2) / sqrt(V + t^2). A student whose network is one free scale per
grid point (f(x, T_n) = s_n x) can represent every fixed point, so training it with the real
``CD.player_loss`` must land on the fixed point computed here independently, in float64:

- Heun teacher: s_n = h_n s_{n+1}, h_n the Heun step's factor, s_{N-1} = 1; this product is
  f* up to Heun's discretization error (both checked), with mu = 0 and with a target EMA;
- sde teacher with an L2 metric: the conditional mean of the stochastic target,
  s_n = A_n s_{n+1} with A_n the mean factor of the DDIM-eta sub-steps; at eta = 1 this is
  the posterior mean, and the one-step samples are narrower than the data (SCott's blur).
"""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cmjax.errors import ConfigError
from cmjax.models import build_model
from cmjax.objectives import CD, EDM, GENERATOR
from cmjax.objectives.base import Frozen, FrozenNetwork, Nets
from cmjax.objectives.cd import karras_descending, sde_step, teacher_step

V = 1.0  # data variance: not sigma_data^2, so the exact teacher's network F is not zero
SD = 0.5
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def exact_teacher() -> Frozen:
    """An EDM network F whose preconditioned denoiser is exactly V / (V + t^2) x."""

    def apply(variables, x_in, c_noise, labels, train, rngs=None):
        del variables, labels, train, rngs
        t = jnp.exp(4.0 * c_noise)[:, None]
        x = x_in * jnp.sqrt(t**2 + SD**2)
        c_skip, c_out = SD**2 / (t**2 + SD**2), t * SD / jnp.sqrt(t**2 + SD**2)
        return (V / (V + t**2) * x - c_skip * x) / c_out

    network = FrozenNetwork(EDM(), types.SimpleNamespace(apply=apply), (1,), 0)
    return Frozen(network, {})


def grid64(n: int) -> np.ndarray:
    """The descending Karras grid in float64 (the same formula, written again)."""
    i = np.arange(n) / (n - 1)
    hi, lo = SIGMA_MAX ** (1 / RHO), SIGMA_MIN ** (1 / RHO)
    return (hi + i * (lo - hi)) ** RHO


def heun_factor(t: float, t2: float) -> float:
    """x_t2 / x_t of one Heun step of dx/dt = (x - D(x, t)) / t = t / (V + t^2) x."""
    d = t / (V + t * t)
    x_euler = 1.0 + (t2 - t) * d
    d2 = t2 / (V + t2 * t2) * x_euler
    return 1.0 + (t2 - t) * (d + d2) / 2


def ddim_eta_mean_and_std(u: float, u2: float, eta: float) -> tuple[float, float]:
    """x_u2 = A x_u + s xi for the exact denoiser: the DDIM-eta step's (A, s)."""
    c = V / (V + u * u)
    s = eta * u2 * math.sqrt(max(1 - (u2 / u) ** 2, 0.0))
    return c + math.sqrt(u2 * u2 - s * s) / u * (1 - c), s


def sub_grid(t: float, t2: float, h: int) -> list[float]:
    return [
        (t ** (1 / RHO) + j / h * (t2 ** (1 / RHO) - t ** (1 / RHO))) ** RHO for j in range(h + 1)
    ]


def fixed_point(factors: list[float]) -> np.ndarray:
    """s_{N-1} = 1, s_n = factors[n] s_{n+1}."""
    s = [1.0]
    for a in reversed(factors):
        s.append(a * s[-1])
    return np.asarray(s[::-1])


def scale_table_student(n: int):
    """f(x, T_n) = (c_skip + c_out c_in a_n) x: one free scale a_n per grid point, picked by
    the nearest grid c_noise."""
    c_grid = 0.25 * jnp.log(karras_descending(n, SIGMA_MIN, SIGMA_MAX, RHO))

    def apply(variables, x_in, c_noise, labels, train, rngs=None):
        del labels, train, rngs
        idx = jnp.argmin(jnp.abs(c_noise[:, None] - c_grid[None, :]), axis=1)
        return variables["params"]["a"][idx][:, None] * x_in

    return apply


def train_student(cd: CD, steps: int = 3000, batch: int = 1024, lr: float = 3e-2):
    """The scale table trained with ``cd.player_loss`` (Adam, cosine decay to lr / 10, the
    parameters averaged over the second half); its slopes f(1, T_n), (N,) float64."""
    n = cd.num_scales
    student = scale_table_student(n)
    frozen = {"teacher": exact_teacher()}
    params = {"a": jnp.zeros((n,), jnp.float32)}
    method_state = cd.init_method_state({GENERATOR: params}, jax.random.key(0))
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.1))

    def step(carry, key):
        params, opt_state, method_state = carry
        k_x, k_loss = jax.random.split(key)
        x = math.sqrt(V) * jax.random.normal(k_x, (batch, 1))

        def loss(p):
            nets = Nets({GENERATOR: p}, {GENERATOR: student}, frozen, method_state)
            per_example, _ = cd.player_loss(GENERATOR, p, nets, {"x": x}, k_loss, 0)
            return jnp.mean(per_example)

        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state)
        params = optax.apply_updates(params, updates)
        method_state = cd.update_method_state(method_state, GENERATOR, {GENERATOR: params}, 0, {})
        return (params, opt_state, method_state), params

    carry = (params, tx.init(params), method_state)
    keys = jax.random.split(jax.random.key(1), steps)
    _, path = jax.jit(lambda c: jax.lax.scan(step, c, keys))(carry)
    # Polyak averaging over the second half: the stochastic target's noise averages out.
    params = jax.tree.map(lambda p: jnp.mean(p[steps // 2 :], axis=0), path)
    grid = karras_descending(n, SIGMA_MIN, SIGMA_MAX, RHO)
    ones = jnp.ones((n, 1))
    slopes = cd.f(student, params, ones, grid, None, jax.random.key(2))[:, 0]
    return np.asarray(slopes, np.float64)


# Heun's own error against f* on N Karras points (float64, computed here): 4.48% at N = 18,
# 0.80% at 40, 0.19% at 80: the discrete fixed point converges to f* as 1 / N^2.
HEUN_ERROR = {18: 0.045, 80: 0.0019}


def heun_fixed_point_and_exact(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = grid64(n)
    expected = fixed_point([heun_factor(t[k], t[k + 1]) for k in range(n - 1)])
    return expected, np.sqrt(V + SIGMA_MIN**2) / np.sqrt(V + t**2)


def test_the_heun_fixed_point_converges_to_the_exact_consistency_function():
    for n, error in HEUN_ERROR.items():
        expected, exact = heun_fixed_point_and_exact(n)
        np.testing.assert_allclose(expected, exact, rtol=error)
        assert np.max(np.abs(expected / exact - 1)) > error / 2  # and not much better


@pytest.mark.parametrize("target_ema", [0.0, 0.95])
def test_cd_with_the_exact_heun_teacher_converges_to_its_fixed_point(target_ema):
    """Trained with the real loss, the student lands on the Heun fixed point (hence on f*
    within Heun's error, the test above)."""
    n = 18
    cd = CD(teacher="exact", num_scales=n, sigma_data=SD, target_ema=target_ema)
    expected, exact = heun_fixed_point_and_exact(n)
    slopes = train_student(cd, steps=2000)
    np.testing.assert_allclose(slopes, expected, rtol=1e-3)  # measured (3,000 steps): 6e-7, 6e-6
    np.testing.assert_allclose(slopes, exact, rtol=HEUN_ERROR[n] + 1e-3)
    assert slopes[-1] == 1.0  # f(x, t_min) = x exactly


@pytest.mark.parametrize("eta", [1.0])  # eta 0.5: the step itself is checked below
def test_l2_cd_with_the_sde_teacher_learns_the_conditional_mean_of_its_target(eta):
    n, substeps = 6, 3
    cd = CD(
        teacher="exact",
        num_scales=n,
        sigma_data=SD,
        teacher_solver="sde",
        eta=eta,
        substeps=substeps,
    )
    t = grid64(n)
    factors = []
    for k in range(n - 1):
        a = 1.0
        u = sub_grid(t[k], t[k + 1], substeps)
        for j in range(substeps):
            a *= ddim_eta_mean_and_std(u[j], u[j + 1], eta)[0]
        factors.append(a)
    expected = fixed_point(factors)
    slopes = train_student(cd, steps=3000, batch=2048)
    # Within 1% (measured: 0.77% at the noisiest point, T_0 = 80, eta = 1; 0.46% at batch
    # 4096), while the ODE's fixed point is 33% away there (below).
    np.testing.assert_allclose(slopes, expected, rtol=1e-2)
    ode = fixed_point([heun_factor(t[k], t[k + 1]) for k in range(n - 1)])
    if eta == 1.0:
        # The one-step samples f(T_0 z, T_0) have std slopes[0] T_0; the data's is 1. The
        # conditional mean blurs: 0.67 of the ODE's (computed here: expected[0] / ode[0]).
        assert slopes[0] * t[0] < 0.75
        assert expected[0] / ode[0] < 0.75


def test_the_eta_one_step_is_the_posterior_and_its_noise_is_right():
    """At eta = 1 the DDIM-eta step is the posterior q(x_u2 | x_u, x0 = D): mean
    D + u2^2 / u^2 (x_u - D), variance u2^2 (1 - u2^2 / u^2); and ``teacher_step`` draws it:
    mean and variance of 40,000 draws from one x_t within 4 standard errors (eta 1 and 0.5)."""
    u, u2 = 3.0, 1.2
    a, s = ddim_eta_mean_and_std(u, u2, 1.0)
    c = V / (V + u * u)
    assert a == pytest.approx(c + (u2 / u) ** 2 * (1 - c), rel=1e-12)
    assert s == pytest.approx(u2 * math.sqrt(1 - (u2 / u) ** 2), rel=1e-12)
    # The jax step with D = c x on x = 1:
    x = jnp.ones((1, 1))
    out = sde_step(x, c * x, jnp.full((1,), u), jnp.full((1,), u2), 1.0, jnp.zeros((1, 1)))
    assert float(out[0, 0]) == pytest.approx(a, rel=1e-6)
    # Three sub-steps from t to t2, drawn, at eta 1 and 0.5.
    b = 40_000
    t, t2 = 5.0, 0.5
    for eta in (1.0, 0.5):
        draws = teacher_step(
            exact_teacher(),
            jnp.ones((b, 1)),
            jnp.full((b,), t),
            jnp.full((b,), t2),
            None,
            jax.random.key(7),
            solver="sde",
            substeps=3,
            eta=eta,
            rho=RHO,
        )
        mean, var = 1.0, 0.0
        pts = sub_grid(t, t2, 3)
        for j in range(3):
            a, s = ddim_eta_mean_and_std(pts[j], pts[j + 1], eta)
            mean, var = a * mean, a * a * var + s * s
        draws = np.asarray(draws[:, 0], np.float64)
        assert abs(draws.mean() - mean) < 4 * math.sqrt(var / b)
        assert abs(draws.var() - var) < 4 * var * math.sqrt(2 / b)


def test_the_heun_and_euler_teachers_match_jcm_solvers_on_the_exact_denoiser():
    """One Heun / Euler step of ``teacher_step`` equals the float64 step written out here."""
    t, t2 = 10.0, 6.5
    x = jnp.full((1, 1), 1.7)
    for solver, expected in (
        ("heun", heun_factor(t, t2)),
        ("euler", 1.0 + (t2 - t) * t / (V + t * t)),
    ):
        out = teacher_step(
            exact_teacher(),
            x,
            jnp.full((1,), t),
            jnp.full((1,), t2),
            None,
            jax.random.key(0),
            solver=solver,
            substeps=1,
            eta=0.0,
            rho=RHO,
        )
        assert float(out[0, 0]) == pytest.approx(1.7 * expected, rel=1e-5)


def test_f_at_sigma_min_is_the_identity_for_any_network():
    model = build_model({"name": "mlp", "hidden": 16, "depth": 2, "num_fourier": 8})
    x = jax.random.normal(jax.random.key(0), (5, 3)) * 4.0
    params = model.init(jax.random.key(1), x, jnp.zeros((5,)), None, False)["params"]
    cd = CD(teacher="exact")
    out = cd.f(model.apply, params, x, jnp.full((5,), cd.sigma_min), None, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(distance="lpip"), "distance"),
        (dict(teacher_solver="rk4"), "teacher_solver"),
        (dict(skip=18), "skip"),
        (dict(target_ema=1.0), "target_ema"),
        (dict(lpips_pool="mean"), "lpips_pool"),
        (dict(eta=0.5), "eta is the sde teacher's noise"),
        (dict(teacher_solver="sde", eta=1.5), "in \\[0, 1\\]"),
        (dict(lpips_vgg="vgg.pth"), "distance is 'l2'"),
    ],
)
def test_bad_cd_settings_are_one_line_config_errors(overrides, words):
    with pytest.raises(ConfigError, match=words):
        CD(teacher="x", **overrides)


def _toy_cd(teacher_dir: str, hidden: int = 32, **objective):
    from cmjax.config import TrainHParams, load_config

    config = load_config("toy2d:two_moons,cd")
    config.model.update(hidden=hidden, depth=2)
    config.objective.update(teacher=teacher_dir, **objective)
    return TrainHParams.from_config(config)


def test_the_student_starts_as_its_teacher_when_the_shapes_allow(toy_teacher, caplog):
    from cmjax import create_train_state
    from cmjax.workdir.frozen import load_frozen

    teacher = toy_teacher("edm", hidden=32, depth=2, steps=20)
    hp = _toy_cd(teacher, target_ema=0.9)
    frozen = load_frozen(hp)
    state = create_train_state(hp, jax.random.key(0), frozen=frozen)
    student = hp.objective.net_params(state.params)
    for a, b, e, tgt in zip(
        jax.tree.leaves(student),
        jax.tree.leaves(frozen["teacher"].params),
        jax.tree.leaves(hp.objective.net_params(state.ema_params[0])),
        jax.tree.leaves(state.method_state["target"]),  # the target network starts there too
        strict=True,
    ):
        for other in (b, e, tgt):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(other))
    # Opted out, or another width: a fresh initialization, and the latter says so.
    hp = _toy_cd(teacher, init_from_teacher=False)
    fresh = hp.objective.net_params(create_train_state(hp, jax.random.key(0), frozen=frozen).params)
    assert not np.array_equal(
        np.asarray(jax.tree.leaves(fresh)[0]), np.asarray(jax.tree.leaves(student)[0])
    )
    hp = _toy_cd(teacher, hidden=48)
    with caplog.at_level("WARNING"):
        create_train_state(hp, jax.random.key(0), frozen=load_frozen(hp))
    assert "another layout than config.model" in caplog.text


def test_cd_refuses_a_teacher_that_is_not_an_edm_run(toy_teacher):
    from cmjax.workdir.frozen import load_frozen

    hp = _toy_cd(toy_teacher("trigflow", hidden=32, depth=2, steps=20))
    with pytest.raises(ConfigError, match="trained with objective 'trigflow'.*'edm'"):
        load_frozen(hp)


@pytest.mark.parametrize(
    "spec, n, mu, distance, pool, lr, warmup, batch, emas",
    [
        ("cifar10_cd", 18, 0.0, "lpips", "max", 4e-4, 19_531, 512, (0.9999,)),
        ("cifar10_cd:l1", 18, 0.0, "l1", "max", 2e-4, 19_531, 512, (0.9999,)),
        (
            "imagenet64_cd",
            40,
            0.95,
            "lpips",
            "avg",
            8e-6,
            0,
            2048,
            (0.9999432189950708, 0.999, 0.9999),
        ),
    ],
)
def test_paper_configs(spec, n, mu, distance, pool, lr, warmup, batch, emas):
    """docs/objectives.md (Consistency distillation): jcm's CIFAR-10 and the PyTorch code's
    ImageNet 64 constants."""
    from cmjax.config import TrainHParams, load_config

    config = load_config(spec)
    hp = TrainHParams.from_config(config)
    o = hp.objective
    assert (o.name, o.num_scales, o.target_ema, o.distance, o.lpips_pool) == (
        "cd",
        n,
        mu,
        distance,
        pool,
    )
    assert (o.teacher_solver, o.weighting, o.skip, o.lpips_size) == ("heun", "uniform", 1, 224)
    assert (o.sigma_min, o.sigma_max, o.rho, o.sigma_data) == (0.002, 80.0, 7.0, 0.5)
    assert (hp.optim.name, hp.optim.learning_rate, hp.optim.eps) == ("radam", lr, 1e-8)
    assert (hp.optim.warmup_steps, hp.optim.grad_clip_norm) == (warmup, 0.0)
    assert config.training.batch_size == batch and hp.ema_rates == emas
    assert config.model.dropout == 0.0 and o.init_from_teacher
    if spec.startswith("cifar10"):
        assert (config.model.name, config.model.fourier_scale, o.noise_cond_scale) == (
            "ncsnpp",
            16.0,
            1.0,
        )
        assert config.training.total_steps == 800_000
        teacher = load_config("cifar10_edm:ncsnpp")
        assert {k: v for k, v in teacher.model.items() if k != "dropout"} == {
            k: v for k, v in config.model.items() if k != "dropout"
        }
        assert teacher.model.dropout == 0.13
    else:
        assert (config.model.name, config.model.use_scale_shift_norm, o.noise_cond_scale) == (
            "adm",
            True,
            1000.0,
        )
        assert config.training.total_steps == 600_000
        assert config.sampling.two_step_sigma == pytest.approx(1.3823679566485092)


# Computed once with the official JAX CD code (openai/consistency_models_cifar10,
# jcm/losses.py get_consistency_loss_fn) on the tiny network and draws of
# tests/fixtures/jcm_cd (make_golden.py, README.md there): batch-mean losses.
JCM_GOLDEN = {
    ("l2", "uniform", "heun", False): 0.004058144986629486,
    ("l1", "snrp1", "heun", True): 17.22260856628418,
    ("l2", "truncated_snr", "euler", True): 0.2703379988670349,
}


@pytest.mark.parametrize("key", list(JCM_GOLDEN))
def test_the_cd_loss_equals_jcms_on_fixed_draws(key):
    import sys
    from pathlib import Path

    distance, weighting, solver, with_target = key
    fixtures = Path(__file__).parent / "fixtures" / "jcm_cd"
    sys.path.insert(0, str(fixtures))
    from tiny import TinyNet, tiny_params, tiny_x

    draws = np.load(fixtures / "draws.npz")
    apply = TinyNet().apply
    teacher = Frozen(FrozenNetwork(EDM(), types.SimpleNamespace(apply=apply), (4, 4, 3), 0), {})
    teacher = Frozen(teacher.network, tiny_params(3))
    cd = CD(teacher="jcm", distance=distance, weighting=weighting, teacher_solver=solver)
    method_state = {"target": tiny_params(2)} if with_target else None
    nets = Nets({GENERATOR: tiny_params(1)}, {GENERATOR: apply}, {"teacher": teacher}, method_state)
    loss, _ = cd.loss_at(
        tiny_params(1),
        nets,
        jnp.asarray(tiny_x()),
        None,
        jnp.asarray(draws["indices"]),
        jnp.asarray(draws["z"]),
        jax.random.key(0),
        jax.random.key(1),
    )
    assert float(jnp.mean(loss)) == pytest.approx(JCM_GOLDEN[key], rel=2e-5)
