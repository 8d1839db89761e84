"""Orbax checkpoints of the TrainState: async saves, retention, preemption, verified resume.

Layout: ``<workdir>/checkpoints/<step>/{state,config,digest[,frozen]}``; ``config`` is the
run's ConfigDict as JSON, ``digest`` a content checksum of every array of the state (see
``state_digest``), verified on restore: a checkpoint without one cannot be verified and is
treated as damaged. ``frozen`` records where the state's frozen networks came from (source,
step, the source's saved config), so a resume rebuilds their networks without the source.
Restores always target an abstract state with shardings attached, so a run can resume on
another mesh or device count.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cmjax.core.state import TrainState
from cmjax.errors import (
    CheckpointError,
    CorruptCheckpointError,
    environment_oserror,
    one_line,
)


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


_NO_ROOM = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
}


def _no_room(e: BaseException) -> str | None:
    """Why a write failed if it is the storage's fault (no space, quota, read-only), from the
    errno anywhere in the exception chain or, for errors that tensorstore only spells out,
    from the message."""
    env = environment_oserror(e)
    if env is not None and env.errno in _NO_ROOM:
        return _NO_ROOM[env.errno]
    text = str(e)
    for code, words in ((errno.ENOSPC, "No space left"), (errno.EDQUOT, "quota exceeded")):
        if words in text:
            return _NO_ROOM[code]
    return None


def _reason(e: BaseException) -> str:
    """Why a read failed, in words: the exception's type and message, never an object repr."""
    text = re.sub(r"<[^<>]*(?:bound method|object at 0x)[^<>]*>", "", one_line(e, 300))
    return f"{type(e).__name__}: {' '.join(text.split())[:160]}"


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
        self._pending: int | None = None  # the step of a save still being written
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
                "digest": ocp.JsonCheckpointHandler(),
                "frozen": ocp.JsonCheckpointHandler(),
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

    def save(
        self,
        step: int,
        state: TrainState,
        config: Mapping[str, Any],
        force: bool = False,
        frozen: Mapping[str, Any] | None = None,
    ) -> bool:
        """Start saving ``state`` (the state after ``step`` steps); returns whether it saves.
        ``frozen``: the records of its frozen networks (``cmjax.workdir.frozen``)."""
        config_json = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        items = dict(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(config_json),
            digest=ocp.args.JsonSave(state_digest(state)),
        )
        if state.frozen is not None:
            if not frozen or set(frozen) != set(state.frozen):
                raise ValueError("a state with frozen networks is saved with their records")
            items["frozen"] = ocp.args.JsonSave(dict(frozen))
        with self._writing(step):
            saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if saved:
            self._pending = step
        return saved

    def reached_preemption(self, step: int) -> bool:
        """Orbax's preemption notice (Cloud TPU maintenance events, multi-host agreed)."""
        return self.manager.reached_preemption(step)

    def shape_mismatches(self, abstract_state: TrainState, step: int) -> list[str]:
        """'leaf: saved -> wanted' for each array whose shape/dtype differs (or is missing)
        between checkpoint ``step`` and ``abstract_state``. Reads metadata only."""
        path = self.directory / str(step)
        try:
            metadata = self.manager.item_metadata(step)["state"]
            saved = _shapes(metadata) if metadata is not None else {}
        except Exception as e:
            raise CorruptCheckpointError(path, f"has unreadable metadata ({_reason(e)})") from e
        if not saved or not (path / "state" / "_METADATA").is_file():
            raise CorruptCheckpointError(path, "has no readable array metadata (state/_METADATA)")
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
        if not (path / "digest").exists():
            raise CorruptCheckpointError(
                path,
                "has no digest, so its content cannot be verified (a save that did not finish, "
                "or a damaged copy)",
            )
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    digest=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:
            raise CorruptCheckpointError(path, f"is truncated or corrupt ({_reason(e)})") from e
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
                f"has no readable config ({_reason(e)}); it was not "
                "written by cmjax-train or is damaged",
            ) from e

    def frozen_records(self, step: int) -> dict[str, Any]:
        """The records of the frozen networks saved with checkpoint ``step`` ({} if none)."""
        path = self.directory / str(step)
        if not (path / "frozen").exists():
            return {}
        try:
            return dict(
                self.manager.restore(
                    step, args=ocp.args.Composite(frozen=ocp.args.JsonRestore())
                ).frozen
            )
        except Exception as e:
            raise CorruptCheckpointError(
                path, f"has an unreadable record of its frozen networks ({_reason(e)})"
            ) from e

    def reload(self) -> None:
        """Re-read the list of checkpoints (after one was moved away)."""
        self.manager.reload()

    def wait_until_finished(self) -> None:
        with self._writing(self._pending):
            self.manager.wait_until_finished()
        self._pending = None

    @contextlib.contextmanager
    def _writing(self, step: int | None):
        """A full disk, a quota or a read-only file system while writing checkpoint ``step``
        becomes one CheckpointError saying what is intact and how to go on."""
        try:
            yield
        except Exception as e:
            reason = _no_room(e)
            if reason is None:
                raise
            intact = [s for s in self.all_steps() if s != step]
            kept = (
                f"the checkpoints already saved are intact (steps {', '.join(map(str, intact))})"
                if intact
                else "no checkpoint was saved yet"
            )
            resume = f"resume from step {intact[0]}" if intact else "start the run again"
            raise CheckpointError(
                f"cannot write checkpoint {self.directory / str(step or '?')}: {reason}; {kept}. "
                f"Free space on that device (or copy the work directory elsewhere) and rerun "
                f"the same command to {resume}"
            ) from e

    def close(self) -> None:
        self.manager.close()


def latest_step(workdir: str | Path) -> int | None:
    """The step of the newest complete checkpoint in ``workdir`` (None if there is none)."""
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()
