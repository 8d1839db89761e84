"""Sample quality of iCT on 2-D toy distributions, one row per distribution.

    python benchmarks/quality_toy.py [--steps 2000] [--objective ict]

Trains configs/toy2d.py for a fixed budget on each distribution and prints the sliced
2-Wasserstein distance to 4,000 held-out points of 1-step and 2-step samples (EMA
parameters), next to the distance between two independent draws of the data: the floor set
by sampling noise at this sample size.
"""

from __future__ import annotations

import argparse
import time

from cmjax.cli.demo import toy_quality, train_toy
from cmjax.config import TrainHParams, load_config
from cmjax.data.toy2d import DISTRIBUTIONS


def toy_hparams(name: str, objective: str, steps: int) -> TrainHParams:
    """configs/toy2d.py for distribution ``name`` and ``objective``, ``steps`` long."""
    config = load_config(f"toy2d:{name},{objective}")
    config.training.total_steps = steps
    return TrainHParams.from_config(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--objective", default="ict", help="a configs/toy2d.py objective token")
    args = parser.parse_args()
    print(
        f"{'distribution':18s} {'steps':>6s} {'1-step':>8s} {'2-step':>8s} {'data':>8s} "
        f"{'train s':>8s}"
    )
    for name in sorted(DISTRIBUTIONS):
        hp = toy_hparams(name, args.objective, args.steps)
        start = time.perf_counter()
        state = train_toy(hp)
        seconds = time.perf_counter() - start
        q = toy_quality(hp, state, state.ema_params[0])
        print(
            f"{name:18s} {args.steps:6d} {q['1-step']:8.4f} {q['2-step']:8.4f} "
            f"{q['data']:8.4f} {seconds:8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
