"""``cmjax-sample --workdir=DIR --num_samples=N --out=x.npz [--steps=2] [--sampler=heun]``.

Restores a work directory's latest (or ``--step``) checkpoint with the config saved inside
it, draws samples from an EMA tree on every device, and writes them as a uint8 .npz in the
layout of the ADM / clean-fid reference batches (``arr_0``: (N, H, W, C) uint8; ``arr_1``:
labels, if class-conditional) plus a PNG grid of the first 100. Vector data is saved as
float32 (N, D). Files appear whole or not at all; non-finite samples are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from absl import flags

from cmjax.cli.runner import Command
from cmjax.config.hparams import TrainHParams
from cmjax.errors import CheckpointError, UserError
from cmjax.objectives import SamplerPlan


def define(fv: flags.FlagValues, argv: Sequence[str]) -> None:
    del argv
    flags.DEFINE_string("workdir", None, "Training work directory.", flag_values=fv)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=fv)
    flags.DEFINE_integer("num_samples", 50_000, "How many samples.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 500, "Samples per batch (global).", flag_values=fv)
    flags.DEFINE_integer(
        "steps",
        None,
        "Sampler steps: 1 or 2 for consistency models (2 adds config.sampling.two_step_sigma), "
        "N Karras sigmas for EDM (Heun: 2N-1 NFE). Default: the objective's first sampler.",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "sigmas",
        None,
        "Explicit decreasing noise levels (or times); overrides --steps.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "sampler",
        None,
        "The objective's solver: 'consistency'; EDM 'heun' or 'euler'; TrigFlow 'ddim'.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "ema_rate", None, "EMA rate to sample from (default: the first).", flag_values=fv
    )
    flags.DEFINE_string(
        "out",
        None,
        "Output .npz (default: WORKDIR/samples_<step>_<sampler>.npz); a PNG grid goes beside it.",
        flag_values=fv,
    )
    flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=fv)


def sampler_plan(
    hp: TrainHParams, steps: int | None, times=None, method: str | None = None
) -> SamplerPlan:
    """The run's objective's sampler for ``--steps`` / ``--sigmas`` / ``--sampler``."""
    if steps is None and not times and method is None:
        return next(iter(hp.objective.sampler_plans().values()))
    try:
        return hp.objective.plan(steps, [float(t) for t in times] if times else None, method)
    except ValueError as e:
        raise UserError(f"{e}; cmjax-sample --help lists the sampler flags") from None


def output_path(out: str | None, workdir: str, step: int, tag: str) -> Path:
    """Where the samples go: ``--out`` (a new or replaced .npz file), or a default name."""
    if not out:
        return Path(workdir) / f"samples_{step}_{tag}.npz"
    path = Path(out)
    if path.suffix != ".npz":
        raise UserError(f"--out={out} must name an .npz file (e.g. {path.with_suffix('.npz')})")
    if path.is_dir():
        raise UserError(f"--out={out} is a directory; name an .npz file inside it")
    return path


def _ema_tree(state, rate: float | None):
    if rate is None:
        return None
    try:
        return state.ema(rate)
    except KeyError:
        raise UserError(
            f"--ema_rate={rate}: this run keeps EMA rates {list(state.ema_rates)}; pass one of them"
        ) from None


def main(fv: flags.FlagValues) -> None:
    from cmjax import images
    from cmjax.evaluation.evaluator import generate
    from cmjax.workdir.atomic import write_atomic
    from cmjax.workdir.runs import RunReader

    for name in ("num_samples", "batch_size"):
        if fv[name].value <= 0:
            raise UserError(f"--{name} must be a positive integer, got {fv[name].value}")
    with RunReader(fv.workdir) as reader:
        step = reader.newest() if fv.step is None else fv.step
        try:
            run = reader.restore(step)
        except CheckpointError as e:
            older = [s for s in reader.steps if s < step]
            hint = f"; pass --step={older[0]} for the newest older one" if older else ""
            raise CheckpointError(f"{e}{hint}") from e
    plan = sampler_plan(run.hp, fv.steps, fv.sigmas, fv.sampler)
    params = _ema_tree(run.state, fv.ema_rate)
    tag = f"{plan.method}{len(plan.times)}" if plan.method != "consistency" else ""
    tag = tag or f"{len(plan.times)}step"
    out = output_path(fv.out, fv.workdir, run.step, tag)
    x, y = generate(
        run.hp, run.state, plan, fv.num_samples, fv.batch_size, fv.seed, params, mesh=run.mesh
    )
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum())
        raise UserError(
            f"{bad} of {len(x)} samples of step {run.step} are not finite: the checkpoint's "
            "parameters are broken (a diverged run?); nothing was written. Sample an earlier "
            "--step"
        )
    is_image = x.ndim == 4
    x = images.to_uint8(x) if is_image else x.astype(np.float32)
    if jax.process_index() == 0:
        arrays = {"arr_0": x} if y is None else {"arr_0": x, "arr_1": y}
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, lambda f: np.savez(f, **arrays))
        if is_image:
            grid = images.make_grid(x[:100])
            images.save_png(out.with_suffix(".png"), grid, scale=max(1, 512 // grid.shape[0]))
        print(f"wrote {len(x)} samples of step {run.step} ({plan.describe()}) to {out}")


COMMAND = Command(
    "cmjax-sample",
    "Draw samples from a run's checkpoint into an .npz (uint8 images, ADM layout) and a PNG grid.",
    define,
    main,
    required=("workdir",),
)
run = COMMAND.run

if __name__ == "__main__":
    run()
