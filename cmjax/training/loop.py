"""The training loop: the one impure module (I/O, clocks, signals, logging).

``train_and_evaluate(config, workdir)`` resolves the config once (``TrainHParams``), resumes
from ``workdir`` if it holds a checkpoint (or loads the method's frozen networks and
``config.init_from`` for a fresh run), compiles the step ahead of time, trains to
``training.total_steps`` and returns the final state. Everything it calls takes the
hyperparameters, is pure and importable on its own.
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
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cmjax.config.hparams import TrainHParams
from cmjax.core import parallel
from cmjax.core.sampling import SamplerCache
from cmjax.core.state import TrainState
from cmjax.core.step import make_train_step
from cmjax.data import make_dataset
from cmjax.errors import ConfigError, UserError
from cmjax.evaluation.evaluator import make_evaluator
from cmjax.models import model_name
from cmjax.training.preemption import PreemptionWatcher
from cmjax.training.reporting import Reporter, write_samples
from cmjax.training.resume import config_changes, resume, set_aside
from cmjax.workdir.atomic import write_text_atomic
from cmjax.workdir.checkpoint import Checkpointer
from cmjax.workdir.frozen import frozen_records, load_frozen
from cmjax.workdir.init_from import apply_init_from
from cmjax.workdir.lock import WorkdirLock

log = logging.getLogger("cmjax")


def check_devices(hp: TrainHParams, num_devices: int) -> None:
    """The global batch must split over the devices."""
    batch = hp.training.batch_size
    if batch % num_devices:
        raise ConfigError(
            f"config.training.batch_size={batch} does not split over {num_devices} devices; "
            f"use a multiple of {num_devices} (e.g. {max(1, batch // num_devices) * num_devices})"
        )


def check_networks(hp: TrainHParams, mesh: Mesh) -> TrainState:
    """The abstract state of the trained networks (nothing allocated): building it runs every
    network's initializer on shapes, so settings that cannot build a network (a width of
    0, ...) are named now, before the work directory is touched."""
    try:
        return parallel.abstract_train_state(hp, mesh)
    except UserError:
        raise
    except Exception as e:  # a network's own assertion or arithmetic on bad settings
        raise ConfigError(
            f"config.model (network {model_name(hp.model)!r}) cannot be built with these "
            f"settings: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
        ) from e


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


def _count_params(abstract: TrainState) -> str:
    """'1,234' (the generator), then ' + discriminator 567' for every other trained network."""
    trees = {"": abstract.params}
    trees.update({f" + {n}": s.params for n, s in (abstract.networks or {}).items()})
    return "".join(
        f"{name} {sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)):,}"
        for name, tree in trees.items()
    ).strip()


def _start(
    hp: TrainHParams,
    config: Mapping[str, Any],
    checkpointer: Checkpointer,
    workdir: Path,
    mesh: Mesh,
    trained: TrainState,
) -> tuple[TrainState, TrainState, dict[str, Any]]:
    """(state, its abstract layout, the frozen networks' records): the newest intact
    checkpoint, or a fresh state with the method's frozen networks loaded from their sources
    and ``init_from`` applied."""
    resumed = resume(checkpointer, hp, config, mesh, workdir)
    if resumed is not None:
        if resumed.problems:
            set_aside(workdir, checkpointer, resumed.problems, resumed.step)
        log.info("resumed from %s at step %d", checkpointer.directory, resumed.step)
        changed = config_changes(resumed.saved_config, config)
        if changed:
            log.warning(
                "resuming with a config that differs from the checkpoint's: %s", "; ".join(changed)
            )
        abstract = jax.tree.map(  # the layout it was restored into
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), resumed.state
        )
        return resumed.state, abstract, resumed.frozen_records
    frozen = load_frozen(hp, mesh)
    for name, f in frozen.items():
        if "loader" in f.record:  # read from published weight files
            log.info("frozen network %r: %s", name, ", ".join(f.record["files"]))
            continue
        log.info(
            "frozen network %r: step %d of %s (objective %r, network %r)",
            name,
            f.record["step"],
            f.record["source"],
            f.network.objective.name,
            model_name(f.network.model),
        )
    abstract = parallel.with_abstract_frozen(
        trained, {n: f.network for n, f in frozen.items()}, mesh
    )
    log.info("initializing a new state: %s parameters", _count_params(abstract))
    state = parallel.create_sharded_train_state(hp, abstract, jax.random.key(hp.seed), frozen)
    return apply_init_from(hp, state, mesh), abstract, frozen_records(frozen)


def train_and_evaluate(config: Mapping[str, Any], workdir: str | Path) -> TrainState:
    """Train (or resume) the run in ``workdir``; returns the final TrainState."""
    hp = TrainHParams.from_config(config)  # the one resolution of this run's config
    parallel.maybe_initialize_distributed(hp.mesh)
    workdir = Path(workdir).absolute()
    total = hp.total_steps
    mesh = parallel.make_mesh(hp.mesh)
    check_devices(hp, mesh.size)
    trained = check_networks(hp, mesh)
    # Built once for the run (every sample grid and evaluation reuses the compiled samplers),
    # and before the work directory is touched: a misconfigured metric stops the run now.
    samplers = SamplerCache(hp.objective, hp.model.apply)
    evaluator = make_evaluator(hp, samplers, mesh)
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
        dataset = make_dataset(
            hp.data, hp.training.batch_size, hp.seed, jax.process_index(), jax.process_count()
        )
        n = len(dataset.source)
        log.info(
            "data: %s, %s examples of shape %s",
            dataset.source.name,
            "an endless stream of" if n >= 2**62 else f"{n:,}",
            tuple(hp.data_shape),
        )
        ckpt = hp.checkpoint
        checkpointer = Checkpointer(
            workdir,
            every_steps=ckpt.every_steps,
            keep=ckpt.keep,
            milestone_every=ckpt.milestone_every or None,
            async_save=ckpt.async_save,
        )
        state, abstract, records = _start(hp, config, checkpointer, workdir, mesh, trained)
        if jax.process_index() == 0:
            cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            write_text_atomic(workdir / "config.json", json.dumps(cfg, indent=2, default=str))
        start = int(jax.device_get(state.step))
        # Built by a jit so that multi-process runs get one global, replicated key.
        rng = jax.jit(lambda: jax.random.key(hp.seed), out_shardings=NamedSharding(mesh, P()))()
        writer = metric_writers.create_default_writer(
            str(workdir), just_logging=jax.process_index() > 0
        )
        if start >= total:
            log.warning(
                "the run in %s is already at step %d, config.training.total_steps is %d: "
                "nothing to train (raise --config.training.total_steps to train on)",
                workdir,
                start,
                total,
            )
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
        report = Reporter(hp, writer, start, checkpointer)
        sample_every, eval_every = hp.training.sample_every, hp.eval.every_steps
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
                checkpointer.save(done, state, config, force=True, frozen=records or None)
            if sample_every and done % sample_every == 0:
                write_samples(hp, state, workdir, writer, done, samplers)
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
