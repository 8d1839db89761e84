"""XLA FLOPs of one MeanFlow train step relative to one iCT step on the same network.

    python benchmarks/meanflow_flops.py [--config cifar10_meanflow] [--batch 8]

Lowers the shared train step (objective loss, gradients, Adam, EMA) of both objectives on
the config's network (iCT gets the same network without the second time input, which costs
one bias-free Dense of the embedding) and prints XLA's cost-analysis FLOPs per example.
Parameters are abstract (eval_shape): nothing is allocated or run.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from cmjax import create_train_state, make_train_step
from cmjax.config import TrainHParams, load_config
from cmjax.config.sections import objective_section, sampling_section


def step_flops(hp: TrainHParams, batch: int) -> float:
    """XLA FLOPs per example of one jitted train step of ``hp`` at ``batch``."""
    state = jax.eval_shape(lambda k: create_train_state(hp, k), jax.random.key(0))
    x = jax.ShapeDtypeStruct((batch, *hp.data_shape), jnp.float32)
    b = {"x": x}
    if hp.num_classes:
        b["label"] = jax.ShapeDtypeStruct((batch,), jnp.int32)
    lowered = jax.jit(make_train_step(hp)).lower(state, b)
    return float(lowered.cost_analysis()["flops"]) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cifar10_meanflow")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, batch {args.batch}")
    rows = {}
    for objective in ("ict", "meanflow"):
        config = load_config(args.config)
        config.objective = objective_section(objective)
        if objective == "ict":
            config.model.second_time_input = False
            config.sampling = sampling_section("ict", two_step_sigma=0.821)
        config.training.batch_size = args.batch
        start = time.perf_counter()
        rows[objective] = step_flops(TrainHParams.from_config(config), args.batch)
        print(
            f"{objective:9s} {rows[objective] / 1e9:10.2f} GFLOP/example"
            f"   ({time.perf_counter() - start:.1f}s)",
            flush=True,
        )
    print(f"meanflow / ict = {rows['meanflow'] / rows['ict']:.3f}")


if __name__ == "__main__":
    main()
