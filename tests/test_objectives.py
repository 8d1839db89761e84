"""Every objective on the one shared core: sharded == unsharded, one compilation over a run,
bit-exact resume through orbax, and learning on a 2-D toy by a stated factor.

Add a new objective to ``FALLS`` (its toy budget and the factor its 1-step distance must
fall by) and these tests cover it; the learning test is in tests/test_objectives_learn.py
(its own file, so that pytest-xdist runs it beside these).
"""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cmjax import create_train_state, make_train_step, parallel
from cmjax.checkpoint import Checkpointer
from cmjax.config_loading import load_config
from cmjax.data import make_dataset
from cmjax.objectives import OBJECTIVES

# objective -> (toy steps, batch, factor by which the first default sampler's sliced W2 to
# held-out data must fall from init to the trained EMA). Measured values in comments.
FALLS = {
    "ict": (600, 256, 3.0),
    "edm": (600, 256, 3.0),
    "ect": (600, 256, 1.3),  # measured 0.335 -> 0.225 (1.49x): from scratch, 1/(t-r) weights
    # the large-t consistency rows little (ECT is meant to start from an EDM run)
    "trigflow": (600, 256, 3.0),  # ddim50: measured 0.428 -> 0.047 (9.1x)
    "sct": (600, 256, 3.0),  # from scratch, 1 step: measured 0.326 -> 0.038 (8.5x)
    # Teacher: 600 TrigFlow steps (session fixture). Factor 3 as the others: not yet measured
    # on this branch (the shared CPU did not finish the run before hand-over).
    "scd": (600, 256, 3.0),
    "meanflow": (600, 256, 3.0),  # measured: 0.799 -> 0.139 (5.7x) on two_moons
}


def toy(objective: str, steps: int = 8, batch: int = 64, teacher=None, hidden=32, depth=2):
    """The two-moons toy for ``objective``; sCD gets a session-trained TrigFlow teacher of the
    same MLP (``teacher`` is the ``trigflow_teacher`` fixture)."""
    config = load_config(f"toy2d:two_moons,{objective}")
    config.model.update(hidden=hidden, depth=depth)
    config.training.update(total_steps=steps, batch_size=batch)
    if objective == "scd":
        config.objective.teacher = teacher(
            hidden=hidden, depth=depth, steps=20 if steps < 100 else 600
        )
    return config


def _leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_every_objective_is_covered():
    assert set(FALLS) == set(OBJECTIVES)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_sharded_step_equals_single_device_step(name, trigflow_teacher):
    config = toy(name, teacher=trigflow_teacher)
    step = make_train_step(config)
    state0 = create_train_state(config, jax.random.key(0))
    data = make_dataset(config)
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
    for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(m1["loss"]), float(m8["loss"]), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_one_compilation_and_bit_exact_resume_through_a_checkpoint(
    name, tmp_path, trigflow_teacher
):
    """12 steps straight (compiled once, across any curriculum/stage change the objective
    has at total_steps=12) equal 6 steps, an orbax save/restore, and 6 more, bit for bit."""
    config = toy(name, steps=12, teacher=trigflow_teacher)
    traces = []
    raw = make_train_step(config)

    def counted(state, batch):
        traces.append(1)
        return raw(state, batch)

    step = jax.jit(counted)
    data = make_dataset(config)
    straight = create_train_state(config, jax.random.key(0))
    for k in range(12):
        straight, _ = step(straight, data.batch(k))
    assert len(traces) == 1  # one compilation for the whole run
    state = create_train_state(config, jax.random.key(0))
    for k in range(6):
        state, _ = step(state, data.batch(k))
    ckpt = Checkpointer(tmp_path, async_save=False)
    ckpt.save(6, state, config, force=True)
    ckpt.wait_until_finished()
    mesh = parallel.make_mesh({}, devices=jax.devices()[:1])
    resumed = ckpt.restore(parallel.abstract_train_state(config, mesh))
    ckpt.close()
    for k in range(6, 12):
        resumed, _ = step(resumed, data.batch(k))
    assert int(resumed.step) == 12
    _leaves_equal(straight.params, resumed.params)
    _leaves_equal(straight.ema_params, resumed.ema_params)
    _leaves_equal(straight.frozen, resumed.frozen)  # sCD's teacher; None elsewhere
