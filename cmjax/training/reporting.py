"""What the loop prints and logs: step metrics (fetched one step late), checked for NaN/inf,
with rate and ETA; the message of a diverged run; the sample grids."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from cmjax import images
from cmjax.config.hparams import TrainHParams
from cmjax.core.sampling import SamplerCache
from cmjax.core.state import TrainState
from cmjax.errors import NonFiniteError
from cmjax.workdir.checkpoint import Checkpointer

log = logging.getLogger("cmjax")


def duration(seconds: float) -> str:
    """'1d 02:03:04' / '02:03:04'."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    clock = f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{days}d {clock}" if days else clock


def _checked(m: Mapping[str, float]) -> list[str]:
    """The metrics that must stay finite: every player's loss and gradient norm."""
    return [k for k in m if k.rsplit("/", 1)[-1] in ("loss", "grad_norm")]


class Reporter:
    """Fetches step metrics one step late, checks them, writes logs and TensorBoard."""

    def __init__(self, hp: TrainHParams, writer, start_step: int, checkpointer: Checkpointer):
        self.writer = writer
        self.total = hp.training.total_steps
        self.global_batch = hp.training.batch_size
        self.every = hp.training.log_every
        self.checkpointer = checkpointer
        self.last_time, self.last_step = time.perf_counter(), start_step
        self.first = start_step + 1  # reported at once: the user sees the run is moving

    def __call__(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = [k for k in _checked(m) if not np.isfinite(m[k])]
        if bad:
            self.checkpointer.wait_until_finished()
            raise NonFiniteError(non_finite_message(m, bad, step + 1, self.checkpointer))
        done = step + 1
        if done % self.every and done != self.total and done != self.first:
            return
        now = time.perf_counter()
        rate = (done - self.last_step) * self.global_batch / max(now - self.last_time, 1e-9)
        eta = (self.total - done) * self.global_batch / max(rate, 1e-9)
        self.last_time, self.last_step = now, done
        m["images_per_sec"] = rate
        self.writer.write_scalars(done, m)
        scales = f"  N {int(m['num_scales'])}" if "num_scales" in m else ""  # iCT's N(k)
        others = "".join(
            f"  {k} {m[k]:.4f}" for k in sorted(m) if k.endswith("/loss")
        )  # the other players of a several-network method
        log.info(
            "step %d/%d  loss %.4f%s%s  %.0f img/s  ETA %s",
            done,
            self.total,
            m["loss"],
            others,
            scales,
            rate,
            duration(eta),
        )


def non_finite_message(
    metrics: Mapping[str, float], bad: list[str], step: int, checkpointer: Checkpointer
) -> str:
    """What went non-finite at ``step`` (1-based), which checkpoints exist, and how to go on."""
    values = ", ".join(f"{k.replace('_', ' ')} ({metrics[k]})" for k in bad)
    what = f"non-finite {values} at step {step}; nothing after it was saved"
    steps = checkpointer.all_steps()
    if not steps:
        return (
            f"{what} and no checkpoint exists yet. Lower optim.learning_rate (or check the "
            "data) and rerun: the run starts afresh."
        )
    newest = steps[0]
    earlier = (
        f"; to resume from an earlier one ({', '.join(map(str, steps[1:]))}) first move the "
        f"newer step folders out of {checkpointer.directory}"
        if len(steps) > 1
        else ""
    )
    return (
        f"{what}. The newest checkpoint, step {newest}, holds finite values but may already "
        f"be diverging. Lower optim.learning_rate (or check the data) and rerun to resume from "
        f"step {newest}{earlier}; or start afresh with a new --workdir."
    )


def write_samples(
    hp: TrainHParams,
    state: TrainState,
    workdir: Path,
    writer,
    step: int,
    samplers: SamplerCache,
) -> None:
    """The objective's default samples (e.g. 1 and 2 steps) from the first EMA tree, as PNG
    grids and TensorBoard images; the jitted samplers come from the run's ``samplers``."""
    if len(hp.data_shape) != 3:
        return
    n = hp.training.num_samples
    labels = jax.numpy.arange(n) % hp.num_classes if hp.num_classes else None
    grids = {}
    for name, plan in hp.objective.sampler_plans().items():
        draw = samplers.get((n, *hp.data_shape), plan)
        x = draw(state.ema_params[0], jax.random.key(hp.seed + 17), labels)
        grids[f"samples_{name}"] = images.make_grid(images.to_uint8(jax.device_get(x)))
    if jax.process_index() == 0:
        for name, grid in grids.items():
            images.save_png(
                workdir / "samples" / f"{name}_{step:08d}.png",
                grid,
                scale=max(1, 256 // grid.shape[0]),
            )
        writer.write_images(step, {k: v[None] for k, v in grids.items()})
