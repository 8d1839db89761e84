"""``cmjax-demo [--distribution=two_moons] [--steps=2000]``: iCT on a 2-D toy on the CPU.

Trains with the library's own step on fresh toy batches, printing the loss as it goes, then
the sliced 2-Wasserstein distance to held-out data of 1-step and 2-step samples from the EMA
parameters, next to the distance between two independent draws of the data (the best any
sampler can do at this sample size).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
from absl import flags

from cmjax.cli.runner import Command
from cmjax.data.toy2d import DISTRIBUTIONS
from cmjax.errors import UserError


def toy_hparams(distribution: str, steps: int):
    """The toy2d config's hyperparameters for ``distribution`` and ``steps``."""
    from cmjax.config import TrainHParams, load_config

    config = load_config(f"toy2d:{distribution}")
    config.training.total_steps = steps
    return TrainHParams.from_config(config)


def train_toy(hp, log_every: int = 0):
    """``hp.training.total_steps`` steps on fresh toy batches; the final state."""
    from cmjax.core.state import create_train_state
    from cmjax.core.step import make_train_step
    from cmjax.data.toy2d import sample_toy

    step = jax.jit(make_train_step(hp), donate_argnums=0)
    state = create_train_state(hp, jax.random.key(hp.seed))
    data_key = jax.random.key(hp.seed + 1)
    total, batch = hp.training.total_steps, hp.training.batch_size
    start = time.perf_counter()
    for k in range(total):
        x = sample_toy(hp.data.distribution, jax.random.fold_in(data_key, k), batch)
        state, metrics = step(state, {"x": x})
        if log_every and (k % log_every == 0 or k == total - 1):
            elapsed = time.perf_counter() - start
            rate = (k + 1) * batch / elapsed
            eta = elapsed / (k + 1) * (total - k - 1)
            print(
                f"step {k + 1:6d}/{total}  loss {float(metrics['loss']):.4f}  "
                f"N {int(metrics['num_scales']):5d}  {rate:9.0f} examples/s  ETA {eta:5.0f} s",
                flush=True,
            )
    return state


def toy_quality(hp, state, params: Any, n: int = 4000) -> dict[str, float]:
    """Sliced W2 to held-out data of 1- and 2-step samples, and of fresh data (the floor)."""
    from cmjax.core.sampling import make_sampler
    from cmjax.data.toy2d import sample_toy
    from cmjax.evaluation.sliced_wasserstein import sliced_wasserstein

    name = hp.data.distribution
    held_out = sample_toy(name, jax.random.key(10**6), n)
    proj_key = jax.random.key(7)
    data = sample_toy(name, jax.random.key(1), n)
    out = {"data": float(sliced_wasserstein(data, held_out, proj_key))}
    for plan_name, plan in hp.objective.sampler_plans().items():
        draw = make_sampler(hp.objective, state.apply_fn, (n, *hp.data_shape), plan)
        x = draw(params, jax.random.key(5))
        out[f"{plan_name[0]}-step"] = float(sliced_wasserstein(x, held_out, proj_key))
    return out


def define(fv: flags.FlagValues, argv: Sequence[str]) -> None:
    del argv
    flags.DEFINE_enum(
        "distribution", "gaussian_mixture", sorted(DISTRIBUTIONS), "The 2-D toy.", flag_values=fv
    )
    flags.DEFINE_integer("steps", 2000, "Training steps (batch 512).", flag_values=fv)


def main(fv: flags.FlagValues) -> None:
    from cmjax.core.state import create_train_state

    if fv.steps < 1:
        raise UserError(f"--steps must be a positive integer, got {fv.steps}")
    hp = toy_hparams(fv.distribution, fv.steps)
    state = train_toy(hp, log_every=max(1, fv.steps // 10))
    init = create_train_state(hp, jax.random.key(hp.seed))
    before = toy_quality(hp, init, init.params)
    after = toy_quality(hp, state, state.ema_params[0])
    print(f"\nsliced W2 to held-out {fv.distribution} data (lower is better):")
    print(f"  two independent data draws   {after['data']:.4f}")
    for label in ("1-step", "2-step"):
        print(f"  {label} samples: init {before[label]:.4f} -> trained (EMA) {after[label]:.4f}")


COMMAND = Command(
    "cmjax-demo",
    "A 30-second look: iCT on a 2-D toy on the CPU, then 1- and 2-step sample quality.",
    define,
    main,
)
run = COMMAND.run

if __name__ == "__main__":
    run()
