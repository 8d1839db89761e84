"""Every objective learns: on the two-moons toy, the sliced W2 of its first default sampler's
samples to held-out data falls by the factor ``FALLS`` states (tests/test_objectives.py)."""

import jax
import numpy as np
import pytest
from conftest import compiled, dataset
from test_objectives import FALLS, SHIPPED, toy

from cmjax import create_train_state, make_train_step
from cmjax.core.sampling import make_sampler
from cmjax.evaluation.sliced_wasserstein import sliced_wasserstein


@pytest.mark.parametrize("name", SHIPPED)
def test_toy_sample_distance_falls(name, toy_teacher):
    steps, batch, factor, hidden, depth = FALLS[name]
    hp, frozen = toy(
        name, steps=steps, batch=batch, teacher=toy_teacher, hidden=hidden, depth=depth
    )
    state = create_train_state(hp, jax.random.key(0), frozen=frozen)
    data = dataset(hp)
    step = compiled(jax.jit(make_train_step(hp), donate_argnums=0), state, data.batch(0))
    plan = next(iter(hp.objective.sampler_plans().values()))
    draw = make_sampler(hp.objective, state.apply_fn, (2000, 2), plan)
    held = np.concatenate([dataset(hp).batch(10**6 + i)["x"] for i in range(8)])[:2000]

    def sw(params):
        return float(sliced_wasserstein(draw(params, jax.random.key(5)), held, jax.random.key(7)))

    before = sw(state.params)
    for k in range(steps):
        state, metrics = step(state, data.batch(k))
    assert np.isfinite(float(metrics["loss"]))
    after = sw(state.ema_params[0])
    assert after < before / factor, (name, before, after)
