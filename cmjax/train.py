"""The training loop: the one impure module (I/O, clocks, signals, logging).

``train_and_evaluate(config, workdir)`` resumes from ``workdir`` if it holds a checkpoint,
compiles the step ahead of time, trains to ``config.training.total_steps`` and returns the
final state. Everything it calls is pure and importable on its own.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from clu import metric_writers
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cmjax import images, parallel
from cmjax.checkpoint import (
    Checkpointer,
    CheckpointError,
    CorruptCheckpointError,
    PreemptionWatcher,
)
from cmjax.data import make_dataset
from cmjax.evaluation.evaluator import make_evaluator
from cmjax.hparams import TrainHParams, validate_config
from cmjax.init_from import apply_init_from
from cmjax.sampling import SamplerCache
from cmjax.train_state import TrainState
from cmjax.train_step import make_train_step
from cmjax.user_errors import UserError
from cmjax.workdir_lock import WorkdirLock

log = logging.getLogger("cmjax")


class NonFiniteError(UserError, FloatingPointError):
    """The loss or gradients became NaN/inf; the message names the step and the checkpoint."""


def _get(config: Mapping[str, Any], section: str, key: str, default):
    return config[section].get(key, default) if section in config else default


class _Reporter:
    """Fetches step metrics one step late, checks them, writes logs and TensorBoard."""

    def __init__(self, config, writer, start_step: int, checkpointer: Checkpointer):
        self.writer = writer
        self.total = int(config["training"]["total_steps"])
        self.global_batch = int(config["training"]["batch_size"])
        self.every = int(_get(config, "training", "log_every", 100))
        self.checkpointer = checkpointer
        self.last_time, self.last_step = time.perf_counter(), start_step
        self.first = start_step + 1  # reported at once: the user sees the run is moving

    def __call__(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
            self.checkpointer.wait_until_finished()
            raise NonFiniteError(non_finite_message(m, step + 1, self.checkpointer))
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
        log.info(
            "step %d/%d  loss %.4f%s  %.0f img/s  ETA %s",
            done,
            self.total,
            m["loss"],
            scales,
            rate,
            _duration(eta),
        )


def _duration(seconds: float) -> str:
    """'1d 02:03:04' / '02:03:04'."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    clock = f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{days}d {clock}" if days else clock


def non_finite_message(metrics: Mapping[str, float], step: int, checkpointer) -> str:
    """What went non-finite at ``step`` (1-based), which checkpoints exist, and how to go on."""
    what = (
        f"non-finite loss ({metrics['loss']}) or gradient norm ({metrics['grad_norm']}) "
        f"at step {step}; nothing after it was saved"
    )
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


def _write_samples(
    config,
    hp: TrainHParams,
    state: TrainState,
    workdir: Path,
    writer,
    step: int,
    samplers: SamplerCache,
):
    """The objective's default samples (e.g. 1 and 2 steps) from the first EMA tree, as PNG
    grids and TensorBoard images; the jitted samplers come from the run's ``samplers``."""
    if len(hp.data_shape) != 3:
        return
    n = int(_get(config, "training", "num_samples", 64))
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


def config_changes(saved: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """'key: old -> new' for every leaf that differs between a saved and a current config."""
    old = traverse_util.flatten_dict(dict(saved), sep=".")
    plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    new = traverse_util.flatten_dict(json.loads(json.dumps(plain, default=str)), sep=".")
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


def _check_run_config(config: Mapping[str, Any], num_devices: int | None) -> None:
    """Values that would otherwise fail deep inside JAX or numpy (devices: once known)."""
    if "training" not in config:
        return  # validate_config names the missing section
    training = config["training"]
    for key in ("total_steps", "batch_size", "log_every"):
        value = training.get(key, 1)
        if not isinstance(value, int) or value <= 0:
            raise UserError(f"config.training.{key} must be a positive integer, got {value!r}")
    batch = int(training.get("batch_size", 1))
    if num_devices and batch % num_devices:
        raise UserError(
            f"config.training.batch_size={batch} does not split over {num_devices} devices; "
            f"use a multiple of {num_devices} (e.g. {max(1, batch // num_devices) * num_devices})"
        )


def _prepare_workdir(workdir: Path) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir} is a file; pass a directory (new or a run's)")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create --workdir {workdir} ({e.strerror}); pass a writable directory"
        ) from e
    if not os.access(workdir, os.W_OK):
        raise UserError(f"--workdir {workdir} is not writable; pass a writable directory")


def _lock_workdir(workdir: Path) -> WorkdirLock | None:
    """Process 0 locks the workdir; every process learns whether that worked."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            _prepare_workdir(workdir)
            lock = WorkdirLock(workdir)
            lock.acquire()
        except UserError as e:
            lock, error = None, e
    if jax.process_count() > 1:
        ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not int(ok) and error is None:
            error = UserError(f"process 0 could not use --workdir {workdir}; see its output")
    if error is not None:
        raise error
    return lock


def incompatible_message(workdir: Path, step: int, saved, config, mismatched) -> str:
    changes = config_changes(saved, config)
    shown = "; ".join(changes[:8]) + (" ..." if len(changes) > 8 else "")
    return (
        f"cannot resume {workdir} (checkpoint step {step}) with this config: "
        f"{'it changes ' + shown if changes else 'the model code changed'}, and the saved "
        f"state no longer fits ({mismatched[0]}{' ...' if len(mismatched) > 1 else ''}). "
        f"Resume with the run's own config (saved in {workdir / 'config.json'}: drop the "
        "changed overrides), or train this config in a new --workdir. Nothing was changed."
    )


def _resume(checkpointer: Checkpointer, abstract, config, workdir: Path):
    """(state, saved config, step, [corrupt newer checkpoints]) of the newest intact
    checkpoint, or None for a fresh run. Refuses an incompatible config before any change."""
    problems: list[tuple[int, CorruptCheckpointError]] = []
    checked = False
    for step in checkpointer.all_steps():
        try:
            saved = checkpointer.restored_config(step)
            if not checked:
                mismatched = checkpointer.shape_mismatches(abstract, step)
                if mismatched:
                    raise CheckpointError(
                        incompatible_message(workdir, step, saved, config, mismatched)
                    )
                checked = True
            state = checkpointer.restore(abstract, step)
        except CorruptCheckpointError as e:
            problems.append((step, e))
            continue
        return state, saved, step, problems
    if problems:
        raise CheckpointError(
            f"no intact checkpoint in {checkpointer.directory}: "
            + "; ".join(f"checkpoints/{e.step} {e.problem[:200]}" for _, e in problems)
            + ". Start afresh in a new --workdir (nothing was changed here)."
        )
    return None


def _set_aside(workdir: Path, checkpointer: Checkpointer, problems, resumed_step: int) -> None:
    """Move corrupt newer checkpoints to <workdir>/corrupt_checkpoints (never deleted)."""
    if jax.process_index() == 0:
        aside = workdir / "corrupt_checkpoints"
        aside.mkdir(exist_ok=True)
        for step, error in problems:
            target = aside / f"{step}-{int(time.time())}"
            (checkpointer.directory / str(step)).rename(target)
            log.warning(
                "%s; moved it to %s and resuming from step %d, the newest intact checkpoint",
                error,
                target,
                resumed_step,
            )
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("cmjax_corrupt_checkpoints_moved")
    checkpointer.reload()


def _count_params(abstract) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))


def train_and_evaluate(config: Mapping[str, Any], workdir: str | Path) -> TrainState:
    """Train (or resume) the run in ``workdir``; returns the final TrainState."""
    _check_run_config(config, None)
    validate_config(config)
    parallel.maybe_initialize_distributed(config.get("mesh"))
    hp = TrainHParams.from_config(config)
    workdir = Path(workdir).absolute()
    total = hp.total_steps
    mesh = parallel.make_mesh(config.get("mesh"))
    _check_run_config(config, mesh.size)
    log.info(
        "devices: %d x %s in %d process(es); mesh %s",
        jax.device_count(),
        jax.devices()[0].platform,
        jax.process_count(),
        dict(mesh.shape),
    )
    lock = _lock_workdir(workdir)
    watcher = PreemptionWatcher(
        on_interrupt=lambda: log.warning(
            "Ctrl-C: saving the current step, then exiting (press Ctrl-C again to abort "
            "without saving)"
        )
    )
    checkpointer = writer = None
    try:
        # Data first: a missing or malformed dataset is reported before anything compiles.
        dataset = make_dataset(config, jax.process_index(), jax.process_count())
        n = len(dataset.source)
        log.info(
            "data: %s, %s examples of shape %s",
            dataset.source.name,
            "an endless stream of" if n >= 2**62 else f"{n:,}",
            tuple(hp.data_shape),
        )
        ckpt_cfg = config.get("checkpoint", {})
        checkpointer = Checkpointer(
            workdir,
            every_steps=int(ckpt_cfg.get("every_steps", 1000)),
            keep=int(ckpt_cfg.get("keep", 3)),
            milestone_every=ckpt_cfg.get("milestone_every") or None,
            async_save=bool(ckpt_cfg.get("async_save", True)),
        )
        abstract = parallel.abstract_train_state(config, mesh)
        resumed = _resume(checkpointer, abstract, config, workdir)
        if resumed is not None:
            state, saved, step, problems = resumed
            if problems:
                _set_aside(workdir, checkpointer, problems, step)
            log.info("resumed from %s at step %d", checkpointer.directory, step)
            changed = config_changes(saved, config)
            if changed:
                log.warning(
                    "resuming with a config that differs from the checkpoint's: %s",
                    "; ".join(changed),
                )
        if jax.process_index() == 0:
            cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            (workdir / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        if resumed is None:
            log.info("initializing a new state: %s parameters", f"{_count_params(abstract):,}")
            state = parallel.create_sharded_train_state(config, abstract, jax.random.key(hp.seed))
            state = apply_init_from(config, state, mesh)  # config.init_from: another run's EMA
        start = int(jax.device_get(state.step))
        # Built by a jit so that multi-process runs get one global, replicated key.
        rng = jax.jit(lambda: jax.random.key(hp.seed), out_shardings=NamedSharding(mesh, P()))()
        writer = metric_writers.create_default_writer(
            str(workdir), just_logging=jax.process_index() > 0
        )
        if start >= total:
            return state
        batches = dataset.iterate(start)
        _, first = next(batches)
        step_fn = parallel.jit_train_step(
            make_train_step(hp), abstract, mesh, {k: v.ndim for k, v in first.items()}
        )
        log.info("compiling the train step ...")
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, parallel.global_batch(first, mesh), rng).compile()
        log.info(
            "train step compiled in %.1f s; training steps %d to %d",
            time.perf_counter() - t0,
            start + 1,
            total,
        )
        report = _Reporter(config, writer, start, checkpointer)
        sample_every = int(_get(config, "training", "sample_every", 0))
        # Built once for the run: every sample grid and evaluation reuses the compiled samplers.
        samplers = SamplerCache(hp.objective, state.apply_fn)
        evaluator = make_evaluator(config, samplers)
        eval_every = int(_get(config, "eval", "every_steps", 0))
        pending = None
        step, local = start, first
        while True:
            state, metrics = compiled(state, parallel.global_batch(local, mesh), rng)
            if pending is not None:
                report(*pending)  # the device is busy with this step meanwhile
            pending = (step, metrics)
            done = step + 1
            stop = watcher.requested() or checkpointer.reached_preemption(done)
            if done == total or stop or checkpointer.should_save(done):
                report(*pending)  # never save a state whose step went non-finite
                pending = None
                checkpointer.save(done, state, config, force=True)
            if sample_every and done % sample_every == 0:
                _write_samples(config, hp, state, workdir, writer, done, samplers)
            if evaluator is not None and (done % eval_every == 0 or done == total):
                scores = evaluator(state)
                writer.write_scalars(done, scores)
                log.info(
                    "eval at step %d: %s",
                    done,
                    "  ".join(f"{k} {v:.4f}" for k, v in scores.items()),
                )
            if done == total or stop:
                if stop and watcher.interrupted:
                    log.warning("Ctrl-C: saved step %d, exiting; rerun to resume", done)
                elif stop:
                    log.warning("preemption requested: saved step %d, exiting", done)
                break
            step, local = next(batches)
        return state
    finally:
        watcher.close()
        try:
            if checkpointer is not None:
                checkpointer.wait_until_finished()
                checkpointer.close()
            if writer is not None:
                writer.flush()
                writer.close()
        finally:
            if lock is not None:
                lock.release()
