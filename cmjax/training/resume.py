"""Resuming a work directory: the newest intact checkpoint, corrupt ones set aside, and an
incompatible config refused before anything is touched."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from cmjax.config.hparams import TrainHParams, objective_config
from cmjax.core import parallel
from cmjax.core.state import TrainState
from cmjax.errors import CheckpointError, CorruptCheckpointError
from cmjax.workdir.checkpoint import Checkpointer
from cmjax.workdir.runs import definitions_from_records

log = logging.getLogger("cmjax")


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


def incompatible_message(workdir: Path, step: int, saved, config, why: str) -> str:
    changes = config_changes(saved, config)
    shown = "; ".join(changes[:8]) + (" ..." if len(changes) > 8 else "")
    return (
        f"cannot resume {workdir} (checkpoint step {step}) with this config: "
        f"{'it changes ' + shown if changes else 'the model code changed'}, and {why}. "
        f"Resume with the run's own config (saved in {workdir / 'config.json'}: drop the "
        "changed overrides), or train this config in a new --workdir. Nothing was changed."
    )


@dataclasses.dataclass
class Resumed:
    """The newest intact checkpoint: its state, saved config and step, the records of its
    frozen networks, and the corrupt newer checkpoints that were skipped."""

    state: TrainState
    saved_config: dict[str, Any]
    step: int
    frozen_records: dict[str, Any]
    problems: list[tuple[int, CorruptCheckpointError]]


def _check_compatible(
    checkpointer: Checkpointer, hp: TrainHParams, config, step: int, mesh: Mesh, workdir: Path
) -> tuple[dict[str, Any], TrainState]:
    """(the checkpoint's frozen records, the abstract state to restore it into); refuses a
    config whose objective differs or whose state no longer fits the checkpoint."""
    saved = checkpointer.restored_config(step)
    saved_objective = objective_config(saved).get("name")
    if saved_objective != hp.objective.name:
        raise CheckpointError(
            incompatible_message(
                workdir,
                step,
                saved,
                config,
                f"the run was trained with objective {saved_objective!r}, not "
                f"{hp.objective.name!r} (mixing objectives in one run is not a resume)",
            )
        )
    records = checkpointer.frozen_records(step)
    abstract = parallel.abstract_train_state(hp, mesh, definitions_from_records(records))
    mismatched = checkpointer.shape_mismatches(abstract, step)
    if mismatched:
        why = (
            f"the saved state no longer fits ({mismatched[0]}"
            f"{' ...' if len(mismatched) > 1 else ''})"
        )
        raise CheckpointError(incompatible_message(workdir, step, saved, config, why))
    return records, abstract


def resume(
    checkpointer: Checkpointer, hp: TrainHParams, config, mesh: Mesh, workdir: Path
) -> Resumed | None:
    """The newest intact checkpoint restored onto ``mesh``, or None for a fresh run. Refuses
    an incompatible config before any change; damaged newer checkpoints are skipped (and
    listed in ``problems``), with none intact it stops and says so."""
    problems: list[tuple[int, CorruptCheckpointError]] = []
    checked = None
    for step in checkpointer.all_steps():
        try:
            saved = checkpointer.restored_config(step)
            if checked is None:
                checked = _check_compatible(checkpointer, hp, config, step, mesh, workdir)
            records, abstract = checked
            state = checkpointer.restore(abstract, step)
        except CorruptCheckpointError as e:
            problems.append((step, e))
            continue
        return Resumed(state, saved, step, records, problems)
    if problems:
        raise CheckpointError(
            f"no intact checkpoint in {checkpointer.directory}: "
            + "; ".join(f"checkpoints/{e.step} {e.problem[:200]}" for _, e in problems)
            + ". Start afresh in a new --workdir (nothing was changed here)."
        )
    return None


def set_aside(workdir: Path, checkpointer: Checkpointer, problems, resumed_step: int) -> None:
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
