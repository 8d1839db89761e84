"""The digits FD proxy (not FID) of every EMA tree, and of the raw parameters, of a run.

    python benchmarks/default_ema_rates.py WORKDIR [WORKDIR ...] [--step N]

Restores each work directory's latest (or ``--step``) checkpoint and scores 1,000 1- and
2-step samples of each parameter tree exactly as the loop's evaluator does for the first EMA
tree (``generate`` at seeds 0.., batch ``config.eval.batch_size``; lower is better, floor
0.39): one training run with ``--config.training.ema_rates='(0.999,0.998,0.995)'`` thus
answers which EMA rate to ship. The first tree's row reproduces the run's own
``eval at step N`` line.
"""

from __future__ import annotations

import argparse

from cmjax import images
from cmjax.evaluation import digits_proxy
from cmjax.evaluation.evaluator import generate
from cmjax.hparams import TrainHParams
from cmjax.sample_cli import restore_run
from cmjax.sampling import SamplerCache


def score_trees(workdir: str, step: int | None = None) -> list[tuple[str, float, float]]:
    """[(tree, 1-step proxy, 2-step proxy)] for each EMA rate and the raw parameters."""
    config, state = restore_run(workdir, step)
    hp = TrainHParams.from_config(config)
    num = int(config.eval.get("num_samples", 1000))
    batch = int(config.eval.get("batch_size", 500))
    samplers = SamplerCache(hp.objective, state.apply_fn)
    trees = [(f"ema {r}", p) for r, p in zip(state.ema_rates, state.ema_params, strict=True)]
    rows = []
    for name, params in [*trees, ("raw params", state.params)]:
        proxy = []
        for plan in hp.objective.sampler_plans().values():
            x = generate(config, state, plan, num, batch, params=params, samplers=samplers)[0]
            proxy.append(digits_proxy.digits_fd_proxy(images.to_uint8(x)))
        rows.append((name, *proxy))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--step", type=int, default=None)
    args = parser.parse_args()
    print("| run | parameters | 1-step proxy | 2-step proxy |")
    print("| --- | --- | --- | --- |")
    for workdir in args.workdirs:
        for name, one, two in score_trees(workdir, args.step):
            print(f"| {workdir} | {name} | {one:.2f} | {two:.2f} |", flush=True)


if __name__ == "__main__":
    main()
