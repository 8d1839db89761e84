"""Reading a work directory: its saved config, resolved hyperparameters and state.

Every command that restores a run (``cmjax-sample``, ``cmjax-combine``, ``config.init_from``,
a frozen teacher) goes through :class:`RunReader` / :func:`read_run`: the config saved inside
a checkpoint rebuilds its abstract state (any objective, network, optimizer or EMA rates, and
the definitions of the frozen networks it holds, from the records saved beside it), and the
checkpoint is restored straight onto the caller's mesh, its digest verified.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jax.sharding import Mesh
from ml_collections import ConfigDict

from cmjax.config.hparams import TrainHParams
from cmjax.core import parallel
from cmjax.core.state import TrainState
from cmjax.errors import CheckpointError, ConfigError
from cmjax.objectives import FrozenNetwork
from cmjax.workdir.checkpoint import Checkpointer
from cmjax.workdir.weights import file_network


def resolve_source(source: str | Path, what: str = "--workdir") -> tuple[Path, int | None]:
    """(work directory, step or None for its newest) of a work directory or of one step
    directory ``<workdir>/checkpoints/<step>``; ``what`` names the flag or key in errors."""
    path = Path(source).expanduser()
    if path.name.isdigit() and path.parent.name == "checkpoints" and path.is_dir():
        return path.parent.parent, int(path.name)
    if (path / "checkpoints").is_dir():
        return path, None
    raise CheckpointError(
        f"{what}={source} is neither a work directory with checkpoints/ nor a step directory "
        "<workdir>/checkpoints/<step>; pass a cmjax-train (or cmjax-import) --workdir"
    )


def definitions_from_records(records: Mapping[str, Any]) -> dict[str, FrozenNetwork]:
    """The frozen networks' definitions from their checkpoint records (a run's saved config,
    or the loader of weight files): no file of the sources is read."""
    out = {}
    for name, rec in records.items():
        loader = rec.get("loader", "run")
        if loader == "run":
            out[name] = FrozenNetwork.from_hparams(TrainHParams.from_config(rec["config"]))
        else:
            out[name] = file_network(loader).definition()
    return out


@dataclasses.dataclass
class Run:
    """One checkpoint of a work directory: its saved config, the hyperparameters resolved from
    it, the records of its frozen networks, and (when restored) its state on ``mesh``."""

    workdir: Path
    step: int
    config: ConfigDict
    hp: TrainHParams
    frozen_records: dict[str, Any]
    state: TrainState | None = None
    mesh: Mesh | None = None


class RunReader:
    """A read-only view of a work directory: ``with RunReader(path) as reader: ...``."""

    def __init__(self, source: str | Path, what: str = "--workdir"):
        self.workdir, self.default_step = resolve_source(source, what)
        self.what = what
        self.checkpointer = Checkpointer(self.workdir, read_only=True)
        self.steps = self.checkpointer.all_steps()  # newest first
        self._runs: dict[int, Run] = {}

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.checkpointer.close()

    def newest(self) -> int:
        """The requested step directory's step, else the newest checkpoint's."""
        if self.default_step is not None:
            return self.default_step
        if not self.steps:
            raise CheckpointError(
                f"{self.what}: no complete checkpoint in {self.checkpointer.directory}; "
                "train first (or pass another work directory)"
            )
        return self.steps[0]

    def run(self, step: int | None = None) -> Run:
        """Checkpoint ``step``'s config, hyperparameters and frozen records (not the state);
        each checkpoint's config is resolved once."""
        step = self.newest() if step is None else int(step)
        if step not in self.steps:
            raise CheckpointError(
                f"{self.what}: no checkpoint of step {step} in {self.workdir}; it has {self.steps}"
            )
        if step not in self._runs:
            config = ConfigDict(self.checkpointer.restored_config(step))
            try:
                hp = TrainHParams.from_config(config)
            except ConfigError as e:
                raise CheckpointError(
                    f"the config saved in {self.checkpointer.directory / str(step)} no longer "
                    f"resolves ({e}); it was written by another cmjax version"
                ) from e
            records = self.checkpointer.frozen_records(step)
            self._runs[step] = Run(self.workdir, step, config, hp, records)
        return self._runs[step]

    def abstract(self, run: Run, mesh: Mesh) -> TrainState:
        """``run``'s abstract state on ``mesh`` (frozen networks from their records)."""
        return parallel.abstract_train_state(
            run.hp, mesh, definitions_from_records(run.frozen_records)
        )

    def restore(self, step: int | None = None, mesh: Mesh | None = None) -> Run:
        """``run(step)`` with its state restored onto ``mesh`` (default: the run's own mesh
        settings over this machine's devices); the digest is verified."""
        run = self.run(step)
        mesh = parallel.make_mesh(run.hp.mesh) if mesh is None else mesh
        state = self.checkpointer.restore(self.abstract(run, mesh), run.step)
        return dataclasses.replace(run, state=state, mesh=mesh)


def read_run(
    source: str | Path, step: int | None = None, mesh: Mesh | None = None, what: str = "--workdir"
) -> Run:
    """The restored checkpoint ``step`` (default: newest) of the work directory ``source``
    (or of the step directory ``<workdir>/checkpoints/<step>``), on ``mesh``."""
    with RunReader(source, what) as reader:
        return reader.restore(step, mesh)
