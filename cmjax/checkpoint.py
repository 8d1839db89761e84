"""Orbax checkpoints of the TrainState: async saves, retention, preemption, exact resume.

Layout: ``<workdir>/checkpoints/<step>/{state,config}``; ``config`` is the run's ConfigDict as
JSON. Restores always target an abstract state with shardings attached, so a run can resume
on another mesh or device count.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from cmjax.train_state import TrainState


class CheckpointError(RuntimeError):
    """A checkpoint cannot be restored; the message names it and says what to do."""


class PreemptionWatcher:
    """Turns SIGTERM into a flag the training loop polls (all processes agree on it)."""

    def __init__(self):
        self._flag = threading.Event()
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        self._flag.set()

    def requested(self) -> bool:
        local = self._flag.is_set()
        if jax.process_count() == 1:
            return local
        return bool(multihost_utils.process_allgather(np.int32(local)).max())

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class Checkpointer:
    """Saves every ``every_steps``, keeps the last ``keep`` plus every ``milestone_every``-th.

    ``read_only=True`` inspects or restores a work directory without touching it.
    """

    def __init__(
        self,
        workdir: str | Path,
        every_steps: int = 1000,
        keep: int = 3,
        milestone_every: int | None = None,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = Path(workdir).absolute() / "checkpoints"
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
            self.directory, options=options, item_names=("state", "config")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state: TrainState, config: Mapping[str, Any], force=False) -> bool:
        """Start saving ``state`` (the state after ``step`` steps); returns whether it saves."""
        config_json = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_json)
            ),
            force=force,
        )

    def reached_preemption(self, step: int) -> bool:
        """Orbax's preemption notice (Cloud TPU maintenance events, multi-host agreed)."""
        return self.manager.reached_preemption(step)

    def restore(self, abstract_state: TrainState, step: int | None = None) -> TrainState:
        """The state at ``step`` (default: latest) laid out like ``abstract_state``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        path = self.directory / str(step)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {path} could not be restored ({type(e).__name__}: "
                f"{_first_line(e)}). It is truncated, corrupt, or from a different model/config. "
                f"Delete {path} to resume from the previous checkpoint, or start in a new "
                "--workdir."
            ) from e
        return restored.state

    def restored_config(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        return self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        ).config

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def latest_step(workdir: str | Path) -> int | None:
    """The step of the newest complete checkpoint in ``workdir`` (None if there is none)."""
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()
