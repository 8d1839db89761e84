"""Every objective learns: on the two-moons toy, the sliced W2 of its first default sampler's
samples to held-out data falls by the factor ``FALLS`` states (tests/test_objectives.py)."""

import jax
import numpy as np
import pytest
from test_objectives import FALLS, toy

from cmjax import TrainHParams, create_train_state, make_train_step
from cmjax.data import make_dataset
from cmjax.evaluation.sliced_wasserstein import sliced_wasserstein
from cmjax.objectives import OBJECTIVES
from cmjax.sampling import make_sampler


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_toy_sample_distance_falls(name, trigflow_teacher):
    steps, batch, factor = FALLS[name]
    config = toy(name, steps=steps, batch=batch, teacher=trigflow_teacher, hidden=128, depth=3)
    hp = TrainHParams.from_config(config)
    step = jax.jit(make_train_step(config), donate_argnums=0)
    state = create_train_state(config, jax.random.key(0))
    plan = next(iter(hp.objective.sampler_plans().values()))
    draw = make_sampler(hp.objective, state.apply_fn, (2000, 2), plan)
    held = np.concatenate([make_dataset(config).batch(10**6 + i)["x"] for i in range(8)])[:2000]

    def sw(params):
        return float(sliced_wasserstein(draw(params, jax.random.key(5)), held, jax.random.key(7)))

    before = sw(state.params)
    data = make_dataset(config)
    for k in range(steps):
        state, metrics = step(state, data.batch(k))
    assert np.isfinite(float(metrics["loss"]))
    after = sw(state.ema_params[0])
    assert after < before / factor, (name, before, after)
