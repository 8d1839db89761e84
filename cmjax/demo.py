"""Train iCT on a 2-D toy distribution on the CPU and report sample quality.

    python -m cmjax.demo [--distribution two_moons] [--steps 2000]

Prints the loss as it trains, then the sliced 2-Wasserstein distance to held-out data of
1-step and 2-step samples from the EMA parameters, next to the distance between two
independent draws of the data (the best any sampler can do at this sample size).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import jax
import numpy as np

from cmjax import TrainHParams, TrainState, create_train_state, make_train_step
from cmjax.config_loading import load_config
from cmjax.data.toy2d import DISTRIBUTIONS, sample_toy
from cmjax.evaluation.sliced_wasserstein import sliced_wasserstein
from cmjax.sampling import make_sampler


def toy_config(distribution: str, steps: int):
    config = load_config(f"toy2d:{distribution}")
    config.training.total_steps = steps
    return config


def train_toy(config, log_every: int = 0) -> TrainState:
    """Run config.training.total_steps iCT steps on fresh toy batches; return the state."""
    step = jax.jit(make_train_step(config), donate_argnums=0)
    state = create_train_state(config, jax.random.key(config.seed))
    data_key = jax.random.key(config.seed + 1)
    start = time.perf_counter()
    for k in range(config.training.total_steps):
        batch = {
            "x": sample_toy(
                config.data.distribution,
                jax.random.fold_in(data_key, k),
                config.training.batch_size,
            )
        }
        state, metrics = step(state, batch)
        if log_every and (k % log_every == 0 or k == config.training.total_steps - 1):
            rate = (k + 1) * config.training.batch_size / (time.perf_counter() - start)
            print(
                f"step {k:6d}  loss {float(metrics['loss']):.4f}  "
                f"N {int(metrics['num_scales']):5d}  {rate:9.0f} examples/s",
                flush=True,
            )
    return state


def toy_quality(config, state: TrainState, params: Any, n: int = 4000) -> dict[str, float]:
    """Sliced W2 to held-out data of 1- and 2-step samples, and of fresh data (the floor)."""
    hp = TrainHParams.from_config(config)
    name = config.data.distribution
    held_out = sample_toy(name, jax.random.key(10**6), n)
    proj_key = jax.random.key(7)
    out = {
        "data": float(
            sliced_wasserstein(sample_toy(name, jax.random.key(1), n), held_out, proj_key)
        )
    }
    for name, plan in hp.objective.sampler_plans().items():
        draw = make_sampler(hp.objective, state.apply_fn, (n, *hp.data_shape), plan)
        x = draw(params, jax.random.key(5))
        out[f"{name[0]}-step"] = float(sliced_wasserstein(x, held_out, proj_key))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--distribution", default="gaussian_mixture", choices=sorted(DISTRIBUTIONS))
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args(argv)
    config = toy_config(args.distribution, args.steps)
    state = train_toy(config, log_every=max(1, args.steps // 10))
    init = create_train_state(config, jax.random.key(config.seed))
    before = toy_quality(config, init, init.params)
    after = toy_quality(config, state, state.ema_params[0])
    print(f"\nsliced W2 to held-out {args.distribution} data (lower is better):")
    print(f"  two independent data draws   {after['data']:.4f}")
    for label in ("1-step", "2-step"):
        print(f"  {label} samples: init {before[label]:.4f} -> trained (EMA) {after[label]:.4f}")
    return 0 if np.isfinite(after["1-step"]) else 1


if __name__ == "__main__":
    sys.exit(main())
