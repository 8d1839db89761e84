"""The digits FD proxy (not FID) of every EMA tree, and of the raw parameters, of a run.

    python benchmarks/default_ema_rates.py WORKDIR [WORKDIR ...] [--step N]

Restores each work directory's latest (or ``--step``) checkpoint and scores 1,000 1- and
2-step samples of each parameter tree exactly as the loop's evaluator does for the first EMA
tree (``generate`` at seeds 0.., batch ``hp.eval.batch_size``; lower is better, floor
0.39): one training run with ``--config.training.ema_rates='(0.999,0.998,0.995)'`` thus
answers which EMA rate to ship. The first tree's row reproduces the run's own
``eval at step N`` line.
"""

from __future__ import annotations

import argparse

from cmjax import images
from cmjax.core.sampling import SamplerCache
from cmjax.evaluation import digits_proxy
from cmjax.evaluation.evaluator import generate
from cmjax.workdir.runs import read_run


def score_trees(workdir: str, step: int | None = None) -> list[tuple[str, float, float]]:
    """[(tree, 1-step proxy, 2-step proxy)] for each EMA rate and the raw parameters."""
    run = read_run(workdir, step)
    hp, state = run.hp, run.state
    num, batch = hp.eval.num_samples, hp.eval.batch_size
    samplers = SamplerCache(hp.objective, state.apply_fn)
    trees = [(f"ema {r}", p) for r, p in zip(state.ema_rates, state.ema_params, strict=True)]
    rows = []
    for name, params in [*trees, ("raw params", state.params)]:
        proxy = []
        for plan in hp.objective.sampler_plans().values():
            x = generate(
                hp, state, plan, num, batch, params=params, samplers=samplers, mesh=run.mesh
            )[0]
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
