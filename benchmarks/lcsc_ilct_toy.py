"""iLCT switches and LCSC on the two-moons toy at an equal training budget.

    python benchmarks/lcsc_ilct_toy.py [--steps 1500] [--batch 256] [--rows 0,1,2,3,4]

Trains configs/toy2d.py:two_moons once per row (plain iCT; each iLCT switch alone; all of
them) for the same steps and batch, keeping a checkpoint every steps/8. Then LCSC searches
coefficients over those checkpoints' raw and EMA trees (CMA-ES, 1-step sliced W2 to 1,000
held-out points, seed 0) and every row reports, on a held-out evaluation seed (other
samples, another held-out set): the final EMA, the best single kept tree, and the LCSC
combination, plus the search metric of the combination. Lower is better.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from cmjax import lcsc
from cmjax.config import load_config
from cmjax.evaluation import metrics
from cmjax.training.loop import train_and_evaluate

ROWS = {
    "iCT": {},
    "+cauchy, adaptive c": dict(loss="cauchy", c_schedule="adaptive"),
    "+diffusion loss (w=5)": dict(diffusion_loss_weight=5.0),
    "+OT pairing": dict(ot_pairing=True),
    "iLCT (all three)": dict(
        loss="cauchy", c_schedule="adaptive", diffusion_loss_weight=5.0, ot_pairing=True
    ),
}


def run_config(steps: int, batch: int, overrides: dict):
    config = load_config("toy2d:two_moons")
    config.training.update(total_steps=steps, batch_size=batch, log_every=steps)
    config.objective.update(overrides)
    config.checkpoint.update(every_steps=steps // 8, keep=8, async_save=False)
    config.eval.update(every_steps=0)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--out", default="/tmp/lcsc_bench")
    parser.add_argument("--rows", default="", help="comma-separated row numbers (default all)")
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)
    print(
        f"{'objective':24s} {'train s':>8s} {'EMA':>8s} {'best 1':>8s} {'LCSC':>8s} "
        f"{'gain':>7s} {'LCSC@search':>12s} {'best tree':>16s}"
    )
    chosen = {int(r) for r in args.rows.split(",") if r} or set(range(len(ROWS)))
    for i, (name, overrides) in enumerate(ROWS.items()):
        if i not in chosen:
            continue
        workdir = Path(args.out) / name.replace(" ", "_").replace(",", "").replace("+", "")
        shutil.rmtree(workdir, ignore_errors=True)
        config = run_config(args.steps, args.batch, overrides)
        t0 = time.perf_counter()
        train_and_evaluate(config, workdir)
        seconds = time.perf_counter() - t0
        run = lcsc.load_stacked(workdir, include_ema=True)
        metric = metrics.sliced_wasserstein_metric(run.hp, 1000)
        scorer = lcsc.Scorer(run, metric, lcsc.sampler_plan(run.hp, 1), 1000, 2)
        result = lcsc.search(
            scorer,
            generations=args.generations,
            population=args.population,
            sigma_init=0.1,
            seed=0,
            progress=None,
        )
        k = run.num
        held = scorer(np.concatenate([np.eye(k), result.alpha[None]]), seed=1, which="eval")
        names = [c.name for c in run.candidates]
        ema = names.index(f"ema_{run.hp.ema_rates[0]}@{args.steps}")
        best = int(np.argmin(held[:-1]))
        gain = (held[best] - held[-1]) / held[best]
        print(
            f"{name:24s} {seconds:8.1f} {held[ema]:8.4f} {held[best]:8.4f} {held[-1]:8.4f} "
            f"{100 * gain:6.1f}% {result.score:12.4f} {names[best]:>16s}",
            flush=True,
        )
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")


if __name__ == "__main__":
    main()
