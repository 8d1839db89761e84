"""``cmjax-combine --workdir=RUN --out=RUN_lcsc [--steps=...] [--include_ema]``.

LCSC (Liu et al. 2024): search coefficients alpha (sum 1, any sign) over a run's saved
checkpoints with CMA-ES against a sample-quality metric, print each candidate's score and
the combination's on the search seed and on a held-out evaluation seed, and write the
combination as a new work directory (config + one checkpoint) that ``cmjax-sample``,
``cmjax-fid`` and ``config.init_from`` read like any run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from absl import flags

from cmjax.cli.runner import Command
from cmjax.errors import UserError

METRIC_NAMES = ("auto", "sliced_wasserstein", "fid", "digits_proxy")


def define(fv: flags.FlagValues, argv: Sequence[str]) -> None:
    del argv
    flags.DEFINE_string("workdir", None, "Training work directory to combine.", flag_values=fv)
    flags.DEFINE_string("out", None, "New work directory for the combination.", flag_values=fv)
    flags.DEFINE_list("steps", None, "Checkpoint steps (default: every kept one).", flag_values=fv)
    flags.DEFINE_bool(
        "include_ema", False, "Also combine each checkpoint's EMA trees.", flag_values=fv
    )
    flags.DEFINE_bool("ema_only", False, "Combine only the EMA trees.", flag_values=fv)
    flags.DEFINE_enum(
        "metric",
        "auto",
        list(METRIC_NAMES),
        "auto: sliced Wasserstein for vector data, FID if config.eval configures it, else the "
        "digits proxy.",
        flag_values=fv,
    )
    flags.DEFINE_string("inception", None, "FID Inception weights (.npz).", flag_values=fv)
    flags.DEFINE_string("ref_stats", None, "FID reference statistics (.npz).", flag_values=fv)
    flags.DEFINE_integer("num_samples", 1000, "Samples per fitness evaluation.", flag_values=fv)
    flags.DEFINE_integer(
        "sampler_steps", None, "1 or 2 (default: the objective's first sampler).", flag_values=fv
    )
    flags.DEFINE_integer("generations", 20, "CMA-ES generations (>= 1).", flag_values=fv)
    flags.DEFINE_integer("population", 16, "CMA-ES population size (>= 2).", flag_values=fv)
    flags.DEFINE_float("sigma_init", 0.1, "CMA-ES initial step size (alpha units).", flag_values=fv)
    flags.DEFINE_integer(
        "per_device",
        1,
        "Population members scored at once per device (vmapped; memory).",
        flag_values=fv,
    )
    flags.DEFINE_integer("seed", 0, "Search seed (CMA-ES and the samples' key).", flag_values=fv)
    flags.DEFINE_integer("eval_seed", 1, "Held-out evaluation seed.", flag_values=fv)


def check_flags(fv: flags.FlagValues) -> list[int] | None:
    """The flags' values that are wrong before anything is read; the steps as integers."""
    for name, low in (("num_samples", 1), ("generations", 1), ("population", 2), ("per_device", 1)):
        if fv[name].value < low:
            raise UserError(f"--{name} must be >= {low}, got {fv[name].value}")
    if fv.sigma_init <= 0:
        raise UserError(f"--sigma_init must be > 0, got {fv.sigma_init}")
    if not fv.steps:
        return None
    try:
        return [int(s) for s in fv.steps]
    except ValueError:
        raise UserError(
            f"--steps={','.join(fv.steps)} must be checkpoint steps, comma-separated integers"
        ) from None


def main(fv: flags.FlagValues) -> None:
    from cmjax import lcsc
    from cmjax.evaluation.metrics import METRICS, default_metric_name

    steps = check_flags(fv)
    lcsc.check_new_workdir(fv.out)  # before the search, not after it
    run = lcsc.load_stacked(
        fv.workdir,
        steps,
        include_ema=fv.include_ema or fv.ema_only,
        include_params=not fv.ema_only,
    )
    if run.num < 2:
        raise UserError(
            f"{fv.workdir} gives {run.num} candidate ({run.candidates[0].name}): LCSC combines "
            "two or more; add --include_ema, or pass a run with more checkpoints"
        )
    if fv.inception or fv.ref_stats:
        run.hp = dataclasses.replace(
            run.hp,
            eval=dataclasses.replace(
                run.hp.eval, inception_path=fv.inception or "", ref_stats=fv.ref_stats or ""
            ),
        )
    name = default_metric_name(run.hp) if fv.metric == "auto" else fv.metric
    metric = METRICS[name](run.hp, fv.num_samples)
    plan = lcsc.sampler_plan(run.hp, fv.sampler_steps)
    scorer = lcsc.Scorer(run, metric, plan, fv.num_samples, fv.per_device)
    print(
        f"LCSC over {run.num} candidates of {fv.workdir} ({plan.describe()}, "
        f"{metric.name}, {fv.num_samples} samples): {', '.join(c.name for c in run.candidates)}"
    )
    result = lcsc.search(
        scorer,
        generations=fv.generations,
        population=fv.population,
        sigma_init=fv.sigma_init,
        seed=fv.seed,
        progress=lambda line: print(line, flush=True),
    )
    held = scorer(np.concatenate([np.eye(run.num), result.alpha[None]]), fv.eval_seed, "eval")
    print(f"{'candidate':>24}  {'alpha':>9}  search  held-out")
    for i, c in enumerate(run.candidates):
        print(f"{c.name:>24}  {result.alpha[i]:9.4f}  {result.single_scores[i]:.5f}  {held[i]:.5f}")
    print(f"{'LCSC combination':>24}  {'':>9}  {result.score:.5f}  {held[-1]:.5f}")
    info = dict(
        metric=metric.name,
        sampler=plan.describe(),
        num_samples=fv.num_samples,
        seed=fv.seed,
        eval_seed=fv.eval_seed,
        search_score=result.score,
        eval_score=float(held[-1]),
        single_search_scores=[float(s) for s in result.single_scores],
        single_eval_scores=[float(s) for s in held[:-1]],
        history=result.history,
        search=dict(generations=fv.generations, population=fv.population, sigma_init=fv.sigma_init),
    )
    out = lcsc.write_combined(fv.out, run, result.alpha, info)
    print(f"wrote the combination (step {int(run.anchor.step)}) to {out}")


COMMAND = Command(
    "cmjax-combine",
    "LCSC: search a linear combination of a run's checkpoints (CMA-ES) and write it as a run.",
    define,
    main,
    required=("workdir", "out"),
)
run = COMMAND.run

if __name__ == "__main__":
    run()
