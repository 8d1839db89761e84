"""``config.init_from``: a run starts from another run's EMA network, bit for bit, at step 0
with a fresh optimizer; a different network is one clear error."""

import jax
import numpy as np
import pytest

from cmjax.config import TrainHParams, load_config
from cmjax.core import parallel
from cmjax.errors import CheckpointError, ConfigError
from cmjax.training.loop import train_and_evaluate
from cmjax.workdir.init_from import apply_init_from
from cmjax.workdir.runs import read_run, resolve_source


def _toy(objective: str, hidden: int = 32, steps: int = 4):
    config = load_config(f"toy2d:two_moons,{objective}")
    config.model.update(hidden=hidden, depth=2)
    config.training.update(total_steps=steps, batch_size=64, log_every=2)
    config.checkpoint.update(every_steps=2, async_save=False)
    config.eval.every_steps = 0
    return config


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 4-step EDM run with checkpoints at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("edm_source")
    train_and_evaluate(_toy("edm"), workdir)
    return workdir


def _source_ema(workdir, step):
    return read_run(workdir, step).state.ema_params[0]


def _fresh(config):
    hp = TrainHParams.from_config(config)
    mesh = parallel.make_mesh()
    abstract = parallel.abstract_train_state(hp, mesh)
    return hp, parallel.create_sharded_train_state(hp, abstract, jax.random.key(0)), mesh


def _equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("form", ["workdir", "step_dir"])
def test_starts_from_the_source_ema_exactly(source, form):
    step = 4 if form == "workdir" else 2
    config = _toy("ect")
    config.init_from = str(source if form == "workdir" else source / "checkpoints" / "2")
    assert resolve_source(config.init_from) == (source, None if form == "workdir" else step)
    hp, fresh, mesh = _fresh(config)
    state = apply_init_from(hp, fresh, mesh)
    want = _source_ema(source, step)
    _equal(state.params, want)
    for ema in state.ema_params:
        _equal(ema, want)
    assert int(state.step) == 0
    _equal(state.opt_state, fresh.opt_state)  # a fresh optimizer (Adam moments zero, count 0)
    if form == "step_dir":  # a different checkpoint than the newest: really that step's EMA
        assert not np.array_equal(
            np.asarray(jax.tree.leaves(want)[0]),
            np.asarray(jax.tree.leaves(_source_ema(source, 4))[0]),
        )


def test_the_training_loop_starts_from_it(source, tmp_path):
    """One Adam step from the source EMA: every parameter moves by at most the learning rate
    (Adam's first update is lr * g / (|g| + eps); a fresh init would be O(1) away),
    and the EMA is rate * source + (1 - rate) * p."""
    config = _toy("ect", steps=1)
    config.optim.update(name="adam", learning_rate=1e-3)
    config.init_from = str(source)
    state = train_and_evaluate(config, tmp_path / "ect")
    want = _source_ema(source, 4)
    assert int(state.step) == 1
    for p, w in zip(jax.tree.leaves(state.params), jax.tree.leaves(want), strict=True):
        assert (
            np.max(np.abs(np.asarray(p) - np.asarray(w))) <= 1e-3 + 1e-6
        )  # + float32 rounding at |p| ~ 1
    rate = config.training.ema_rates[0]
    for e, p, w in zip(
        jax.tree.leaves(state.ema_params[0]),
        jax.tree.leaves(state.params),
        jax.tree.leaves(want),
        strict=True,
    ):
        np.testing.assert_allclose(
            np.asarray(e), rate * np.asarray(w) + (1 - rate) * np.asarray(p), rtol=1e-6, atol=1e-7
        )


def test_a_different_network_is_one_clear_error(source):
    config = _toy("ect", hidden=48)
    config.init_from = str(source)
    hp, fresh, mesh = _fresh(config)
    with pytest.raises(ConfigError) as info:
        apply_init_from(hp, fresh, mesh)
    message = str(info.value)
    assert "\n" not in message
    assert "(32,)" in message or "32)" in message
    assert "48" in message and "model 'mlp'" in message and "network parameter " in message


def test_a_path_without_checkpoints_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="neither a work directory"):
        resolve_source(tmp_path / "nothing_here")
