"""Orbax checkpoints of the TrainState: async saves, retention, preemption, verified resume.

Layout: ``<workdir>/checkpoints/<step>/{state,config,digest}``; ``config`` is the run's
ConfigDict as JSON, ``digest`` a content checksum of every array of the state (see
``state_digest``), verified on restore. Restores always target an abstract state with
shardings attached, so a run can resume on another mesh or device count.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from cmjax.train_state import TrainState
from cmjax.user_errors import UserError, one_line


class CheckpointError(UserError):
    """A checkpoint cannot be restored; the message names it and says what to do."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's bytes are truncated or do not match its recorded digest."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"checkpoint {path} {problem}")
        self.step = path.name
        self.problem = problem


class PreemptionWatcher:
    """Turns SIGTERM and the first Ctrl-C (SIGINT) into a flag the training loop polls (all
    processes agree on it). A second Ctrl-C aborts at once (KeyboardInterrupt)."""

    def __init__(self, on_interrupt=None):
        self._flag = threading.Event()
        self._previous: dict[int, Any] = {}
        self._on_interrupt = on_interrupt
        self.interrupted = False  # the flag came from Ctrl-C (not SIGTERM)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self._flag.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self._flag.set()
        if signum == signal.SIGINT:
            self.interrupted = True
            if self._on_interrupt is not None:
                self._on_interrupt()

    def requested(self) -> bool:
        local = self._flag.is_set()
        if jax.process_count() == 1:
            return local
        return bool(multihost_utils.process_allgather(np.int32(local)).max())

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


def _leaf_name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _as_uint32(x: jax.Array) -> jax.Array:
    """The bits of ``x`` as a flat uint32 vector (one word per 4-byte element or less)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.ravel().astype(jnp.uint32)
    bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, bits).ravel().astype(jnp.uint32)


@jax.jit
def _digest_words(state_arrays) -> list[jax.Array]:
    out = []
    for x in state_arrays:
        u = _as_uint32(x)
        i = jax.lax.iota(jnp.uint32, u.size)
        w1 = i * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15) | jnp.uint32(1)
        w2 = (i ^ jnp.uint32(0x85EBCA6B)) * jnp.uint32(0xC2B2AE35) | jnp.uint32(1)
        rot = (u << 13) | (u >> 19)
        out.append(
            jnp.stack([jnp.sum(u * w1, dtype=jnp.uint32), jnp.sum(rot * w2, dtype=jnp.uint32)])
        )
    return out


def state_digest(state: TrainState) -> dict[str, list[int]]:
    """Two position-weighted uint32 sums of the bits of every array leaf: {leaf: [a, b]}.

    Computed on the devices where the state lives, as a sharded reduction: no host copy of
    the state, and (integer sums being exact) the same numbers on any mesh or device count.
    Any change to a single 32-bit word changes both sums (the weights are odd).
    """
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    words = jax.device_get(_digest_words([x for _, x in leaves]))
    return {
        _leaf_name(p): [int(v) for v in np.asarray(w)]
        for (p, _), w in zip(leaves, words, strict=True)
    }


def _shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    return {
        _leaf_name(p): (tuple(x.shape), str(x.dtype))
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


class Checkpointer:
    """Saves at multiples of ``every_steps`` (and when forced), keeps the last ``keep`` plus
    every ``milestone_every``-th. ``read_only=True`` inspects or restores a work directory
    without touching it."""

    def __init__(
        self,
        workdir: str | Path,
        every_steps: int = 1000,
        keep: int = 3,
        milestone_every: int | None = None,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.workdir = Path(workdir).absolute()
        self.directory = self.workdir / "checkpoints"
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps,
            max_to_keep=keep,
            keep_period=milestone_every or None,
            enable_async_checkpointing=async_save,
            create=not read_only,
            cleanup_tmp_directories=not read_only,  # unfinished saves of a killed run
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
                "digest": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def should_save(self, step: int) -> bool:
        """A periodic save is due after ``step`` steps (never the first step of a run:
        that state says nothing yet, and after a divergence it is no 'last good' one)."""
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state: TrainState, config: Mapping[str, Any], force=False) -> bool:
        """Start saving ``state`` (the state after ``step`` steps); returns whether it saves."""
        config_json = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(config_json),
                digest=ocp.args.JsonSave(state_digest(state)),
            ),
            force=force,
        )

    def reached_preemption(self, step: int) -> bool:
        """Orbax's preemption notice (Cloud TPU maintenance events, multi-host agreed)."""
        return self.manager.reached_preemption(step)

    def shape_mismatches(self, abstract_state: TrainState, step: int) -> list[str]:
        """'leaf: saved -> wanted' for each array whose shape/dtype differs (or is missing)
        between checkpoint ``step`` and ``abstract_state``. Reads metadata only."""
        try:
            saved = _shapes(self.manager.item_metadata(step)["state"])
        except Exception as e:
            raise CorruptCheckpointError(
                self.directory / str(step),
                f"has unreadable metadata ({type(e).__name__}: {one_line(e, 160)})",
            ) from e
        wanted = _shapes(abstract_state)
        return [
            f"{k}: {saved.get(k, 'missing')} -> {wanted.get(k, 'missing')}"
            for k in sorted(set(saved) | set(wanted))
            if saved.get(k) != wanted.get(k)
        ]

    def restore(self, abstract_state: TrainState, step: int | None = None) -> TrainState:
        """The state at ``step`` (default: latest) laid out like ``abstract_state``; its
        digest is verified. Raises CorruptCheckpointError for truncated or altered bytes."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        path = self.directory / str(step)
        mismatched = self.shape_mismatches(abstract_state, step)
        if mismatched:
            raise CheckpointError(
                f"checkpoint {path} holds a different model/config: {'; '.join(mismatched[:5])}"
                f"{' ...' if len(mismatched) > 5 else ''}"
            )
        items = ["state", "digest"] if (path / "digest").exists() else ["state"]
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    **({"digest": ocp.args.JsonRestore()} if "digest" in items else {}),
                ),
            )
        except Exception as e:
            raise CorruptCheckpointError(
                path, f"is truncated or corrupt ({type(e).__name__}: {one_line(e, 160)})"
            ) from e
        if "digest" in items:
            expected = dict(restored.digest)
            actual = state_digest(restored.state)
            bad = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
            if bad:
                raise CorruptCheckpointError(
                    path,
                    f"is corrupt: the content of {len(bad)} array(s) "
                    f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}) does not match "
                    "the digest recorded when it was saved",
                )
        return restored.state

    def restored_config(self, step: int | None = None) -> dict[str, Any]:
        """The config saved with checkpoint ``step`` (default: latest)."""
        step = self.latest_step() if step is None else step
        path = self.directory / str(step)
        try:
            return self.manager.restore(
                step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
            ).config
        except Exception as e:
            raise CorruptCheckpointError(
                path,
                f"has no readable config ({type(e).__name__}: {one_line(e, 160)}); it was not "
                "written by cmjax-train or is damaged",
            ) from e

    def reload(self) -> None:
        """Re-read the list of checkpoints (after one was moved away)."""
        self.manager.reload()

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def latest_step(workdir: str | Path) -> int | None:
    """The step of the newest complete checkpoint in ``workdir`` (None if there is none)."""
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()
