"""``cmjax-combine --workdir=RUN --out=RUN_lcsc [--steps=...] [--include_ema]``.

LCSC (Liu et al. 2024): search coefficients alpha (sum 1, any sign) over a run's saved
checkpoints with CMA-ES against a sample-quality metric, print each candidate's score and
the combination's on the search seed and on a held-out evaluation seed, and write the
combination as a new work directory (config + one checkpoint) that ``cmjax-sample``,
``cmjax-fid`` and ``config.init_from`` read like any run.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from cmjax import combine

_WORKDIR = flags.DEFINE_string("workdir", None, "Training work directory to combine.")
_OUT = flags.DEFINE_string("out", None, "New work directory for the combination.")
_STEPS = flags.DEFINE_list("steps", None, "Checkpoint steps (default: every kept one).")
_EMA = flags.DEFINE_bool("include_ema", False, "Also combine each checkpoint's EMA trees.")
_NO_RAW = flags.DEFINE_bool("ema_only", False, "Combine only the EMA trees.")
_METRIC = flags.DEFINE_enum(
    "metric",
    "auto",
    ["auto", *combine.METRICS],
    "auto: sliced Wasserstein for vector data, FID if config.eval configures it, else digits.",
)
_INCEPTION = flags.DEFINE_string("inception", None, "FID Inception weights (.npz).")
_REF = flags.DEFINE_string("ref_stats", None, "FID reference statistics (.npz).")
_NUM = flags.DEFINE_integer("num_samples", 1000, "Samples per fitness evaluation.")
_SAMPLER_STEPS = flags.DEFINE_integer("sampler_steps", None, "1 or 2 (default: the first).")
_GEN = flags.DEFINE_integer("generations", 20, "CMA-ES generations.")
_POP = flags.DEFINE_integer("population", 16, "CMA-ES population size.")
_SIGMA = flags.DEFINE_float("sigma_init", 0.1, "CMA-ES initial step size (alpha units).")
_PER_DEVICE = flags.DEFINE_integer(
    "per_device", 1, "Population members scored at once per device (vmapped; memory)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Search seed (CMA-ES and the samples' key).")
_EVAL_SEED = flags.DEFINE_integer("eval_seed", 1, "Held-out evaluation seed.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        run = combine.load_stacked(
            _WORKDIR.value,
            [int(s) for s in _STEPS.value] if _STEPS.value else None,
            include_ema=_EMA.value or _NO_RAW.value,
            include_params=not _NO_RAW.value,
        )
        if _INCEPTION.value or _REF.value:
            run.config.eval.update(inception_path=_INCEPTION.value, ref_stats=_REF.value)
        name = combine.default_metric_name(run.config) if _METRIC.value == "auto" else _METRIC.value
        metric = combine.METRICS[name](run.config, _NUM.value)
        plan = combine.sampler_plan(run.config, _SAMPLER_STEPS.value)
        scorer = combine.Scorer(run, metric, plan, _NUM.value, _PER_DEVICE.value)
        print(
            f"LCSC over {run.num} candidates of {_WORKDIR.value} ({plan.describe()}, "
            f"{metric.name}, {_NUM.value} samples): {', '.join(c.name for c in run.candidates)}"
        )
        result = combine.search(
            scorer,
            generations=_GEN.value,
            population=_POP.value,
            sigma_init=_SIGMA.value,
            seed=_SEED.value,
            progress=lambda line: print(line, flush=True),
        )
        held = scorer(
            np.concatenate([np.eye(run.num), result.alpha[None]]), _EVAL_SEED.value, "eval"
        )
    except (combine.CombineError, combine.CheckpointError) as e:
        sys.exit(f"cmjax-combine: {e}")
    print(f"{'candidate':>24}  {'alpha':>9}  search  held-out")
    for i, c in enumerate(run.candidates):
        print(f"{c.name:>24}  {result.alpha[i]:9.4f}  {result.single_scores[i]:.5f}  {held[i]:.5f}")
    print(f"{'LCSC combination':>24}  {'':>9}  {result.score:.5f}  {held[-1]:.5f}")
    info = dict(
        metric=metric.name,
        sampler=plan.describe(),
        num_samples=_NUM.value,
        seed=_SEED.value,
        eval_seed=_EVAL_SEED.value,
        search_score=result.score,
        eval_score=float(held[-1]),
        single_search_scores=[float(s) for s in result.single_scores],
        single_eval_scores=[float(s) for s in held[:-1]],
        history=result.history,
        search=dict(generations=_GEN.value, population=_POP.value, sigma_init=_SIGMA.value),
    )
    out = combine.write_combined(_OUT.value, run, result.alpha, info)
    print(f"wrote the combination (step {int(run.anchor.step)}) to {out}")


def run() -> None:
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main)


if __name__ == "__main__":
    run()
