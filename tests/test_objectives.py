"""The conformance harness: every objective and method on the one shared core.

For each shipped objective and for a two-network method (``tests/toy_gan.py``: a GAN whose
generator and discriminator alternate, with method state): sharded == unsharded on 8 fake
devices, one compilation over a run, a bit-exact resume through an orbax checkpoint of the
whole state (every network's parameters, both optimizer states, EMA trees, frozen networks
and method state), no NaN; for a method with an update schedule, the idle player's
parameters, optimizer state and EMA trees are bit-identical across its off steps.

Add a new objective to ``FALLS`` (its toy budget and the factor its 1-step distance must fall
by) and these tests cover it; the learning test is in tests/test_objectives_learn.py (its own
file, so that pytest-xdist runs it beside these).
"""

import jax
import numpy as np
import pytest
import toy_gan
from conftest import dataset
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cmjax import create_train_state, make_train_step
from cmjax.config import TrainHParams, load_config
from cmjax.core import parallel
from cmjax.objectives import GENERATOR, OBJECTIVES
from cmjax.workdir.checkpoint import Checkpointer
from cmjax.workdir.frozen import frozen_records, load_frozen

# objective -> (toy steps, batch, factor by which the first default sampler's sliced W2 to
# held-out data must fall from init to the trained EMA, MLP width, depth). Measured values in
# comments (two moons; the data-vs-data floor is 0.019). iCT and ECT need the 128-wide MLP:
# at 64 x 2 they fall 1.79x and 0.94x.
FALLS = {
    "ict": (600, 256, 3.0, 128, 3),  # measured 0.335 -> 0.089 (3.8x)
    "edm": (600, 256, 3.0, 64, 2),  # heun18: measured 0.396 -> 0.080 (4.9x)
    "ect": (600, 256, 1.3, 128, 3),  # measured 0.335 -> 0.225 (1.49x): from scratch, 1/(t-r)
    # weights the large-t consistency rows little (ECT is meant to start from an EDM run)
    "trigflow": (600, 256, 3.0, 64, 2),  # ddim50: measured 0.540 -> 0.066 (8.2x)
    "sct": (600, 256, 3.0, 64, 2),  # from scratch, 1 step: measured 0.325 -> 0.037 (8.7x)
    # Teacher: 600 TrigFlow steps of the same MLP (session fixture): 0.325 -> 0.065 (5.0x)
    "scd": (600, 256, 3.0, 64, 2),
    "meanflow": (600, 256, 3.0, 64, 2),  # measured: 1.028 -> 0.189 (5.4x)
    "flow": (600, 256, 3.0, 64, 2),  # euler50: measured 1.123 -> 0.128 (8.8x)
    # The student starts as its teacher (600 EDM steps of the same MLP, session fixture), a
    # poor 1-step model: measured 0.328 -> 0.064 (5.1x; iCT from scratch at 128x3: 0.089)
    "cd": (600, 256, 3.0, 64, 2),
}
SHIPPED = sorted(n for n, c in OBJECTIVES.items() if c.__module__.startswith("cmjax."))
METHODS = [*SHIPPED, toy_gan.ToyGAN.name]


TEACHERS = {"scd": "trigflow", "cd": "edm"}
# Settings that make the short conformance runs cover more state: CD with a target network
# (an EMA of the student, method state), so a resume must carry it bit-exactly.
CONFORMANCE = {"cd": dict(target_ema=0.95)}


def toy(objective: str, steps: int = 8, batch: int = 64, teacher=None, hidden=32, depth=2):
    """(hp, frozen) of the two-moons toy for ``objective``; sCD and CD get a session-trained
    teacher of the same MLP (TEACHERS; ``teacher`` is the ``toy_teacher`` fixture)."""
    if objective == toy_gan.ToyGAN.name:
        config = toy_gan.toy_gan_config(hidden=hidden, steps=steps, batch=batch)
    else:
        config = load_config(f"toy2d:two_moons,{objective}")
        config.model.update(hidden=hidden, depth=depth)
        config.training.update(total_steps=steps, batch_size=batch)
    if steps < 100:
        config.objective.update(CONFORMANCE.get(objective, {}))
    if objective in TEACHERS:
        config.objective.teacher = teacher(
            TEACHERS[objective], hidden=hidden, depth=depth, steps=20 if steps < 100 else 600
        )
    hp = TrainHParams.from_config(config)
    return hp, load_frozen(hp)


def _leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _finite(metrics):
    for k, v in metrics.items():
        assert np.isfinite(np.asarray(v)).all(), (k, v)


def test_every_objective_is_covered():
    assert set(FALLS) == set(SHIPPED)


@pytest.mark.parametrize("name", METHODS)
def test_sharded_step_equals_single_device_step(name, toy_teacher):
    hp, frozen = toy(name, teacher=toy_teacher)
    step = make_train_step(hp)
    state0 = create_train_state(hp, jax.random.key(0), frozen=frozen)
    data = dataset(hp)
    rng = jax.random.key(3)
    s1 = state0
    for k in range(2):
        s1, m1 = jax.jit(step)(s1, data.batch(k), rng)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    repl, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    sharded = jax.jit(step, in_shardings=(repl, shard, repl), out_shardings=(repl, repl))
    s8 = jax.device_put(state0, repl)
    for k in range(2):
        s8, m8 = sharded(s8, jax.device_put(data.batch(k), shard), rng)
    for x, y in zip(jax.tree.leaves(s1), jax.tree.leaves(s8), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    for key in m1:
        np.testing.assert_allclose(float(m1[key]), float(m8[key]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", METHODS)
def test_one_compilation_and_bit_exact_resume_through_a_checkpoint(name, tmp_path, toy_teacher):
    """12 steps straight (compiled once, across any curriculum/stage change or player
    schedule the method has at total_steps=12, no NaN) equal 6 steps, an orbax save/restore
    of the whole state, and 6 more, bit for bit."""
    hp, frozen = toy(name, steps=12, teacher=toy_teacher)
    traces = []
    raw = make_train_step(hp)

    def counted(state, batch):
        traces.append(1)
        return raw(state, batch)

    step = jax.jit(counted)
    data = dataset(hp)
    straight = create_train_state(hp, jax.random.key(0), frozen=frozen)
    for k in range(12):
        straight, metrics = step(straight, data.batch(k))
        _finite(metrics)
    assert len(traces) == 1  # one compilation for the whole run
    state = create_train_state(hp, jax.random.key(0), frozen=frozen)
    for k in range(6):
        state, _ = step(state, data.batch(k))
    ckpt = Checkpointer(tmp_path, async_save=False)
    ckpt.save(6, state, {}, force=True, frozen=frozen_records(frozen) or None)
    ckpt.wait_until_finished()
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    defs = {n: f.network for n, f in frozen.items()}
    resumed = ckpt.restore(parallel.abstract_train_state(hp, mesh, defs))
    ckpt.close()
    for k in range(6, 12):
        resumed, _ = step(resumed, data.batch(k))
    assert int(resumed.step) == 12
    assert jax.tree.structure(resumed) == jax.tree.structure(straight)
    _leaves_equal(straight, resumed)  # every network, optimizer, EMA, frozen, method state


def test_the_idle_player_is_bit_identical_on_its_off_steps():
    """ToyGAN alternates: G updates on even steps, D on odd ones. After a G step, D's
    parameters and optimizer state are exactly what they were, and vice versa (no zero-
    gradient Adam step moves them); the method state moves only with D."""
    hp, _ = toy(toy_gan.ToyGAN.name)
    step = jax.jit(make_train_step(hp))
    data = dataset(hp)
    state = create_train_state(hp, jax.random.key(0))
    for k in range(4):
        new, metrics = step(state, data.batch(k))
        g_turn = k % 2 == 0
        idle = toy_gan.DISCRIMINATOR if g_turn else GENERATOR
        busy = GENERATOR if g_turn else toy_gan.DISCRIMINATOR
        _leaves_equal(new.network(idle), state.network(idle))
        moved = [
            not np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(
                jax.tree.leaves(new.network(busy).params),
                jax.tree.leaves(state.network(busy).params),
                strict=True,
            )
        ]
        assert sum(moved) > len(moved) // 2  # (a zero-gradient leaf, e.g. an unused bias, stays)
        count = int(new.network(busy).opt_state[0].count)
        assert count == int(state.network(busy).opt_state[0].count) + 1
        assert float(metrics["discriminator/active"]) == float(not g_turn)
        if g_turn:
            _leaves_equal(new.method_state, state.method_state)
            assert float(metrics["discriminator/loss"]) == 0.0  # not computed on G's steps
        else:
            assert float(new.method_state["ema_real"]) != float(state.method_state["ema_real"])
        state = new
    assert int(state.network(GENERATOR).opt_state[0].count) == 2
