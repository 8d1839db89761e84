"""The training loop: the one impure module (I/O, clocks, signals, logging).

``train_and_evaluate(config, workdir)`` resumes from ``workdir`` if it holds a checkpoint,
compiles the step ahead of time, trains to ``config.training.total_steps`` and returns the
final state. Everything it calls is pure and importable on its own.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from clu import metric_writers
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cmjax import images, parallel
from cmjax.checkpoint import Checkpointer, PreemptionWatcher
from cmjax.data import make_dataset
from cmjax.evaluation.evaluator import make_evaluator
from cmjax.hparams import TrainHParams, validate_config
from cmjax.sampling import make_sampler
from cmjax.train_state import TrainState
from cmjax.train_step import make_train_step

log = logging.getLogger("cmjax")


class NonFiniteError(FloatingPointError):
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

    def __call__(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
            self.checkpointer.wait_until_finished()
            raise NonFiniteError(
                f"non-finite loss ({m['loss']}) or gradient norm ({m['grad_norm']}) at step "
                f"{step}; nothing after the last good checkpoint (step "
                f"{self.checkpointer.latest_step()}) was saved. Lower optim.learning_rate or "
                "check the data, then rerun to resume from that checkpoint."
            )
        done = step + 1
        if done % self.every and done != self.total:
            return
        now = time.perf_counter()
        rate = (done - self.last_step) * self.global_batch / max(now - self.last_time, 1e-9)
        eta = (self.total - done) * self.global_batch / max(rate, 1e-9)
        self.last_time, self.last_step = now, done
        m["images_per_sec"] = rate
        self.writer.write_scalars(done, m)
        log.info(
            "step %d/%d  loss %.4f%s  %.0f img/s  ETA %s",
            done,
            self.total,
            m["loss"],
            f"  N {int(m['num_scales'])}" if "num_scales" in m else "",  # iCT's curriculum
            rate,
            time.strftime("%H:%M:%S", time.gmtime(eta)),
        )


def _write_samples(config, hp: TrainHParams, state: TrainState, workdir: Path, writer, step):
    """The objective's default samples (e.g. 1 and 2 steps) from the first EMA tree, as PNG
    grids and TensorBoard images."""
    if len(hp.data_shape) != 3:
        return
    n = int(_get(config, "training", "num_samples", 64))
    labels = jax.numpy.arange(n) % hp.num_classes if hp.num_classes else None
    grids = {}
    for name, plan in hp.objective.sampler_plans().items():
        draw = make_sampler(hp.objective, state.apply_fn, (n, *hp.data_shape), plan)
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


def train_and_evaluate(config: Mapping[str, Any], workdir: str | Path) -> TrainState:
    """Train (or resume) the run in ``workdir``; returns the final TrainState."""
    validate_config(config)
    parallel.maybe_initialize_distributed(config.get("mesh"))
    hp = TrainHParams.from_config(config)
    workdir = Path(workdir)
    total = hp.total_steps
    mesh = parallel.make_mesh(config.get("mesh"))
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        (workdir / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    ckpt_cfg = config.get("checkpoint", {})
    checkpointer = Checkpointer(
        workdir,
        every_steps=int(ckpt_cfg.get("every_steps", 1000)),
        keep=int(ckpt_cfg.get("keep", 3)),
        milestone_every=ckpt_cfg.get("milestone_every") or None,
        async_save=bool(ckpt_cfg.get("async_save", True)),
    )
    abstract = parallel.abstract_train_state(config, mesh)
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(abstract)
        log.info("resumed from %s at step %d", checkpointer.directory, int(state.step))
        changed = config_changes(checkpointer.restored_config(), config)
        if changed:
            log.warning(
                "resuming with a config that differs from the checkpoint's: %s", "; ".join(changed)
            )
    else:
        state = parallel.create_sharded_train_state(config, abstract, jax.random.key(hp.seed))
    start = int(jax.device_get(state.step))
    dataset = make_dataset(config, jax.process_index(), jax.process_count())
    # Built by a jit so that multi-process runs get one global, replicated key.
    rng = jax.jit(lambda: jax.random.key(hp.seed), out_shardings=NamedSharding(mesh, P()))()
    writer = metric_writers.create_default_writer(
        str(workdir), just_logging=jax.process_index() > 0
    )
    watcher = PreemptionWatcher()
    try:
        if start >= total:
            return state
        batches = dataset.iterate(start)
        _, first = next(batches)
        step_fn = parallel.jit_train_step(
            make_train_step(hp), abstract, mesh, {k: v.ndim for k, v in first.items()}
        )
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, parallel.global_batch(first, mesh), rng).compile()
        log.info("train step compiled in %.1f s", time.perf_counter() - t0)
        report = _Reporter(config, writer, start, checkpointer)
        sample_every = int(_get(config, "training", "sample_every", 0))
        evaluator = make_evaluator(config)
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
                _write_samples(config, hp, state, workdir, writer, done)
            if evaluator is not None and (done % eval_every == 0 or done == total):
                scores = evaluator(state)
                writer.write_scalars(done, scores)
                log.info(
                    "eval at step %d: %s",
                    done,
                    "  ".join(f"{k} {v:.4f}" for k, v in scores.items()),
                )
            if done == total or stop:
                if stop:
                    log.warning("preemption requested: saved step %d, exiting", done)
                break
            step, local = next(batches)
        return state
    finally:
        checkpointer.wait_until_finished()
        checkpointer.close()
        watcher.close()
        writer.flush()
        writer.close()
