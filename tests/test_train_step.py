"""The train step: sharded == unsharded, one compilation, synchronized dropout, learning."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compiled
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cmjax import ConfigError, TrainHParams, create_train_state, make_train_step
from cmjax.core.sampling import sample
from cmjax.data.toy2d import sample_toy
from cmjax.evaluation.sliced_wasserstein import sliced_wasserstein
from cmjax.objectives.preconditioning import consistency_fn, student_teacher_outputs


def _image_batch(config, key, n=None):
    n = n or config.training.batch_size
    return {"x": jax.random.uniform(key, (n, *config.data.shape), minval=-1.0, maxval=1.0)}


def _leaves_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_sharded_step_equals_single_device_step(image_config):
    assert len(jax.devices()) == 8
    step = make_train_step(image_config)
    state0 = create_train_state(image_config, jax.random.key(0))
    batches = [_image_batch(image_config, jax.random.key(i)) for i in (10, 11)]
    rng = jax.random.key(3)

    single = jax.jit(step, device=None)
    s1 = state0
    for b in batches:
        s1, m1 = single(s1, b, rng)

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    sharded = jax.jit(step, in_shardings=(repl, data, repl), out_shardings=(repl, repl))
    s8 = jax.device_put(state0, repl)
    for b in batches:
        s8, m8 = sharded(s8, jax.device_put(b, data), rng)

    assert len(s8.params["Conv_0"]["kernel"].sharding.device_set) == 8
    assert int(s8.step) == int(s1.step) == 2
    _leaves_close(s1.params, s8.params, rtol=1e-4, atol=1e-6)
    _leaves_close(s1.ema_params, s8.ema_params, rtol=1e-4, atol=1e-6)
    _leaves_close(s1.opt_state, s8.opt_state, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(m1["loss"]), float(m8["loss"]), rtol=1e-5)


def test_step_compiles_once_across_curriculum_change(toy_config):
    toy_config.training.total_steps = 16  # K' = 2: N doubles every 2 steps
    traces = []
    step = make_train_step(toy_config)

    def counted(state, batch):
        traces.append(1)
        return step(state, batch)

    jitted = jax.jit(counted)
    state = create_train_state(toy_config, jax.random.key(0))
    seen = []
    for k in range(8):
        state, metrics = jitted(state, {"x": sample_toy("two_moons", jax.random.key(k), 64)})
        seen.append(int(metrics["num_scales"]))
    assert seen == [11, 11, 21, 21, 41, 41, 81, 81]
    assert len(traces) == 1


def test_same_rng_same_result_and_step_folds_rng(toy_config):
    step = jax.jit(make_train_step(toy_config))
    state = create_train_state(toy_config, jax.random.key(0))
    batch = {"x": sample_toy("two_moons", jax.random.key(1), 64)}
    a, _ = step(state, batch, jax.random.key(5))
    b, _ = step(state, batch, jax.random.key(5))
    c, _ = step(state.replace(step=state.step + 1), batch, jax.random.key(5))
    _leaves_close(a.params, b.params, 0, 0)
    diff = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.abs(x - y).max(), a.params, c.params))
    assert max(float(d) for d in diff) > 0  # another step draws other noise


class DropoutProbe(nn.Module):
    """F = dropout(ones): its zeros show the dropout mask."""

    @nn.compact
    def __call__(self, x, noise_cond, labels=None, train=False):
        return nn.Dropout(0.5, deterministic=not train)(jnp.ones_like(x))


def test_student_and_teacher_share_the_dropout_mask():
    probe = DropoutProbe()
    x = jnp.zeros((4, 64))
    sig, sig_next = jnp.full((4,), 0.5), jnp.full((4,), 0.7)
    student, teacher = student_teacher_outputs(
        probe.apply,
        {},
        x,
        jnp.zeros_like(x),
        sig,
        sig_next,
        None,
        jax.random.key(0),
    )
    mask_s, mask_t = np.asarray(student) != 0, np.asarray(teacher) != 0
    assert 0.3 < mask_s.mean() < 0.7
    np.testing.assert_array_equal(mask_s, mask_t)
    # The check has teeth: another key gives another mask.
    other = consistency_fn(probe.apply, {}, x, sig, train=True, dropout_rng=jax.random.key(1))
    assert np.any((np.asarray(other) != 0) != mask_t)


def test_teacher_passes_no_gradient(toy_config):
    state = create_train_state(toy_config, jax.random.key(0))
    x = sample_toy("two_moons", jax.random.key(1), 8)
    z = jax.random.normal(jax.random.key(2), x.shape)

    def teacher_sum(p):
        _, t = student_teacher_outputs(
            state.apply_fn,
            p,
            x,
            z,
            jnp.full((8,), 0.5),
            jnp.full((8,), 0.7),
            None,
            jax.random.key(0),
        )
        return t.sum()

    g = jax.grad(teacher_sum)(state.params)
    assert all(float(jnp.abs(leaf).max()) == 0.0 for leaf in jax.tree.leaves(g))


def test_boundary_condition_holds_for_any_network_output():
    x = jax.random.normal(jax.random.key(0), (3, 5))

    def wild(variables, x_in, c, labels, train, rngs=None):
        return jnp.full_like(x_in, 1e6)

    out = consistency_fn(wild, {}, x, jnp.full((3,), 0.002), sigma_min=0.002)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_ema_tracks_params_at_each_rate(toy_config):
    toy_config.training.ema_rates = (0.9, 0.0)
    state = create_train_state(toy_config, jax.random.key(0))
    new, _ = jax.jit(make_train_step(toy_config))(
        state, {"x": sample_toy("two_moons", jax.random.key(1), 64)}
    )
    _leaves_close(new.ema(0.0), new.params, 0, 0)
    want = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state.params, new.params)
    _leaves_close(new.ema(0.9), want, 1e-6, 1e-7)


def test_loss_falls_at_fixed_discretization(toy_config):
    # N fixed at 41: losses comparable over time.
    toy_config.objective.s0 = toy_config.objective.s1 = 40
    toy_config.training.total_steps = 400
    state = create_train_state(toy_config, jax.random.key(0))
    batches = [{"x": sample_toy("gaussian_mixture", jax.random.key(k), 64)} for k in range(400)]
    step = compiled(jax.jit(make_train_step(toy_config), donate_argnums=0), state, batches[0])
    losses = []
    for batch in batches:
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    first, last = np.mean(losses[:50]), np.mean(losses[-50:])
    assert np.isfinite(losses).all()
    slope = np.polyfit(np.arange(len(losses)), losses, 1)[0]
    assert last < 0.9 * first, (first, last)  # measured: 0.86 -> 0.71
    assert slope < 0


def test_one_step_samples_approach_the_toy_distribution(toy_config):
    """800 iCT steps with the full curriculum: sliced W2 to held-out data falls >= 3x."""
    toy_config.model.hidden = 128
    toy_config.model.depth = 3
    toy_config.training.batch_size = 256
    toy_config.training.total_steps = 800
    hp = TrainHParams.from_config(toy_config)
    state = create_train_state(toy_config, jax.random.key(0))
    batches = [{"x": sample_toy("gaussian_mixture", jax.random.key(k), 256)} for k in range(800)]
    step = compiled(jax.jit(make_train_step(toy_config), donate_argnums=0), state, batches[0])
    held_out = sample_toy("gaussian_mixture", jax.random.key(10_000), 2000)

    def sw_one_step(params):
        plan = hp.objective.plan(1)
        x = sample(hp.objective, state.apply_fn, params, jax.random.key(5), (2000, 2), plan)
        return float(sliced_wasserstein(x, held_out, jax.random.key(7)))

    before = sw_one_step(state.params)
    for batch in batches:
        state, _ = step(state, batch)
    after = sw_one_step(state.ema_params[0])
    noise_floor = float(
        sliced_wasserstein(
            sample_toy("gaussian_mixture", jax.random.key(1), 2000), held_out, jax.random.key(7)
        )
    )
    assert after < before / 3, (before, after)
    assert after < 3 * noise_floor, (after, noise_floor)


def test_bad_batches_and_config_keys_are_named(toy_config):
    step = make_train_step(toy_config)
    state = create_train_state(toy_config, jax.random.key(0))
    with pytest.raises(ValueError, match=r"example shape \(3,\).*\(2,\)"):
        step(state, {"x": jnp.zeros((4, 3))})
    with pytest.raises(ValueError, match="needs key 'x'"):
        step(state, {"image": jnp.zeros((4, 2))})
    with pytest.raises(ValueError, match="unconditional"):
        step(state, {"x": jnp.zeros((4, 2)), "label": jnp.zeros((4,), jnp.int32)})
    toy_config.objective.p_meen = -1.1
    with pytest.raises(ConfigError, match=r"config\.objective\.p_meen"):
        make_train_step(toy_config)
    del toy_config.objective["p_meen"]
    toy_config.model.widht = 3
    with pytest.raises(ValueError, match=r"config\.model\.widht"):
        create_train_state(toy_config, jax.random.key(0))


def test_default_loss_c_follows_data_dimension(image_config):
    assert TrainHParams.from_config(image_config).objective.loss_c == pytest.approx(
        0.00054 * np.sqrt(192)
    )
    image_config.data.shape = (32, 32, 3)
    assert round(TrainHParams.from_config(image_config).objective.loss_c, 4) == 0.0299
    image_config.objective.loss_c = 0.1
    assert TrainHParams.from_config(image_config).objective.loss_c == 0.1


def test_fsdp_shards_parameters_and_matches_replicated(image_config):
    """mesh.fsdp=4: large leaves split over 'fsdp', same step result as the replicated mesh."""
    from cmjax.config.hparams import MeshHParams
    from cmjax.core import parallel

    image_config.model.channels = 16
    step = make_train_step(image_config)
    batch = _image_batch(image_config, jax.random.key(10))
    results = {}
    for fsdp in (1, 4):
        mesh = parallel.make_mesh(MeshHParams(fsdp=fsdp))
        abstract = parallel.abstract_train_state(image_config, mesh)
        state = parallel.create_sharded_train_state(image_config, abstract, jax.random.key(0))
        jitted = parallel.jit_train_step(step, abstract, mesh, {"x": 4})
        state, _ = jitted(state, parallel.global_batch(batch, mesh), jax.random.key(3))
        results[fsdp] = state
        specs = [leaf.sharding.spec for leaf in jax.tree.leaves(state.params)]
        sharded = [s for s in specs if "fsdp" in tuple(s)]
        assert (len(sharded) > 0) == (fsdp > 1)
        mu = jax.tree.leaves(state.opt_state)
        assert any("fsdp" in tuple(x.sharding.spec) for x in mu if x.ndim) == (fsdp > 1)
    _leaves_close(results[1].params, results[4].params, rtol=1e-4, atol=1e-6)
