"""``cmjax-sample --workdir=DIR --num_samples=N --out=x.npz [--steps=2] [--sampler=heun]``.

Restores a work directory's latest (or ``--step``) checkpoint with the config saved inside
it, draws samples from an EMA tree on every device, and writes them as a uint8 .npz in the
layout of the ADM / clean-fid reference batches (``arr_0``: (N, H, W, C) uint8; ``arr_1``:
labels, if class-conditional) plus a PNG grid of the first 100. Vector data is saved as
float32 (N, D).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from absl import flags
from ml_collections import ConfigDict

from cmjax import images, parallel
from cmjax.checkpoint import Checkpointer, CheckpointError
from cmjax.cli import run_and_exit
from cmjax.evaluation.evaluator import generate
from cmjax.hparams import TrainHParams
from cmjax.objectives import SamplerPlan
from cmjax.user_errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "Training work directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_NUM = flags.DEFINE_integer("num_samples", 50_000, "How many samples.")
_BATCH = flags.DEFINE_integer("batch_size", 500, "Samples per device batch (global).")
_STEPS = flags.DEFINE_integer(
    "steps",
    None,
    "Sampler steps: 1 or 2 for consistency models (2 adds config.sampling.two_step_sigma), "
    "N Karras sigmas for EDM (Heun: 2N-1 NFE). Default: the objective's first default sampler.",
)
_SIGMAS = flags.DEFINE_list(
    "sigmas", None, "Explicit decreasing noise levels (or times); overrides --steps."
)
_SAMPLER = flags.DEFINE_string(
    "sampler", None, "The objective's solver: 'consistency'; EDM 'heun' or 'euler'."
)
_EMA = flags.DEFINE_float("ema_rate", None, "EMA rate to sample from (default: the first).")
_OUT = flags.DEFINE_string("out", None, "Output .npz (default: WORKDIR/samples_<step>.npz).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def sampler_plan(config, steps: int | None, times=None, method: str | None = None) -> SamplerPlan:
    """The run's objective's sampler for ``--steps`` / ``--sigmas`` / ``--sampler``."""
    objective = TrainHParams.from_config(config).objective
    if steps is None and not times and method is None:
        return next(iter(objective.sampler_plans().values()))
    try:
        return objective.plan(steps, [float(t) for t in times] if times else None, method)
    except ValueError as e:
        raise UserError(str(e)) from None


def restore_run(workdir: str, step: int | None = None):
    """(config, state) of a work directory's checkpoint, laid out on this machine's mesh."""
    if not (Path(workdir) / "checkpoints").is_dir():
        raise CheckpointError(f"{workdir} has no checkpoints/ folder; pass a cmjax-train --workdir")
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        steps = checkpointer.all_steps()
        step = (steps[0] if steps else None) if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {checkpointer.directory}; train first")
        if step not in steps:
            raise CheckpointError(f"no checkpoint of step {step} in {workdir}; it has {steps}")
        config = ConfigDict(checkpointer.restored_config(step))
        mesh = parallel.make_mesh(config.get("mesh"))
        try:
            state = checkpointer.restore(parallel.abstract_train_state(config, mesh), step)
        except CheckpointError as e:
            older = [s for s in steps if s < step]
            hint = f"; pass --step={older[0]} for the newest older one" if older else ""
            raise CheckpointError(f"{e}{hint}") from e
    finally:
        checkpointer.close()
    return config, state


def _check_flags() -> None:
    for flag in (_NUM, _BATCH):
        if flag.value <= 0:
            raise UserError(f"--{flag.name} must be a positive integer, got {flag.value}")
    if _WORKDIR.value is None:
        raise UserError("--workdir is required: the cmjax-train work directory to sample from")


def main(argv) -> None:
    del argv
    _check_flags()
    config, state = restore_run(_WORKDIR.value, _STEP.value)
    step = int(jax.device_get(state.step))
    plan = sampler_plan(config, _STEPS.value, _SIGMAS.value, _SAMPLER.value)
    params = state.ema(_EMA.value) if _EMA.value is not None else None
    x, y = generate(config, state, plan, _NUM.value, _BATCH.value, _SEED.value, params)
    is_image = x.ndim == 4
    x = images.to_uint8(x) if is_image else x.astype(np.float32)
    tag = f"{plan.method}{len(plan.times)}" if plan.method != "consistency" else ""
    tag = tag or f"{len(plan.times)}step"
    out = Path(_OUT.value or Path(_WORKDIR.value) / f"samples_{step}_{tag}.npz")
    if jax.process_index() == 0:
        arrays = {"arr_0": x} if y is None else {"arr_0": x, "arr_1": y}
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, **arrays)
        if is_image:
            grid = images.make_grid(x[:100])
            images.save_png(out.with_suffix(".png"), grid, scale=max(1, 512 // grid.shape[0]))
        print(f"wrote {len(x)} samples of step {step} ({plan.describe()}) to {out}")


def run() -> None:
    """Console-script entry point: one line on stderr for any error (see cmjax/cli.py)."""
    run_and_exit("cmjax-sample", main, lambda: None)


if __name__ == "__main__":
    run()
