"""Frozen networks a method declares (``Objective.frozen_networks()``), loaded once.

A frozen network is another run's first EMA network: a ``cmjax-train`` work directory or one
``cmjax-import`` wrote (an EDM or CM checkpoint), of the kind the method asks for. Its own
saved config builds its own network, so a teacher may have any architecture. The training
loop calls :func:`load_frozen` once, when a run starts fresh; afterwards the parameters live
in ``TrainState.frozen`` and are checkpointed with the run, together with a record of where
they came from (source, step, the source's config), so a resume never reads the source
again. In a notebook::

    hp = cmjax.TrainHParams.from_config(config)
    state = cmjax.create_train_state(hp, jax.random.key(0), frozen=cmjax.load_frozen(hp))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cmjax.config.hparams import TrainHParams
from cmjax.core import parallel
from cmjax.errors import ConfigError, WeightsError
from cmjax.objectives import Frozen, FrozenNetwork, FrozenSpec
from cmjax.workdir.runs import read_run
from cmjax.workdir.weights import file_network


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedFrozen(Frozen):
    """A frozen network as loaded: definition, parameters, and the record saved with the
    run's checkpoints ({"source", "step", "config"})."""

    record: dict[str, Any] = dataclasses.field(default_factory=dict)


def check_layout(loaded: Any, like: Any, what: str) -> None:
    """ConfigError unless ``loaded`` has the tree structure and leaf shapes of ``like``."""
    if jax.tree.structure(loaded) != jax.tree.structure(like):
        raise ConfigError(f"{what}: its parameters do not fit the network its config builds")
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(like), strict=True):
        if a.shape != b.shape:
            raise ConfigError(
                f"{what}: a parameter of shape {a.shape} where its network has {b.shape}"
            )


def load_files(hp: TrainHParams, name: str, spec: FrozenSpec, mesh: Mesh) -> LoadedFrozen:
    """A frozen network read from weight files (``spec.loader``), placed on ``mesh``."""
    network = file_network(spec.loader)
    keys = spec.file_keys or (spec.key,) * len(spec.files)
    unset = [k for k, f in zip(keys, spec.files, strict=True) if not f]
    if unset or not spec.files:
        what = " and ".join(dict.fromkeys(unset)) or spec.key
        raise ConfigError(f"{what} is not set; {spec.key} must name {spec.hint or 'the files'}")
    definition = network.definition()
    try:
        params = network.load(spec.files)
    except WeightsError as e:
        raise WeightsError(f"{spec.key}: {e}") from None
    check_layout(params, definition.abstract_params(), f"{spec.key} ({', '.join(spec.files)})")
    hp.objective.check_frozen(name, definition)
    replicated = NamedSharding(mesh, PartitionSpec())
    params = jax.tree.map(lambda a: jax.device_put(a, replicated), params)
    record = {"loader": spec.loader, "files": [str(Path(f).absolute()) for f in spec.files]}
    return LoadedFrozen(definition, params, record)


def load_one(hp: TrainHParams, name: str, spec: FrozenSpec, mesh: Mesh) -> LoadedFrozen:
    """Frozen network ``name`` of ``hp``'s objective, restored onto ``mesh`` and checked."""
    if spec.loader != "run":
        return load_files(hp, name, spec, mesh)
    if not spec.source:
        raise ConfigError(f"{spec.key} is not set; it must name {spec.hint or 'a work directory'}")
    run = read_run(spec.source, mesh=mesh, what=spec.key)
    what = f"{spec.key}={spec.source} (step {run.step})"
    kind = run.hp.objective.name
    if kind not in spec.kinds:
        raise ConfigError(
            f"{what} was trained with objective {kind!r}; {hp.objective.name} reads a "
            f"{' or '.join(repr(k) for k in spec.kinds)} run here"
        )
    definition = FrozenNetwork.from_hparams(run.hp)
    if (definition.data_shape, definition.num_classes) != (hp.data_shape, hp.num_classes):
        raise ConfigError(
            f"{what} models data of shape {definition.data_shape} with "
            f"{definition.num_classes} classes; this run has {hp.data_shape} with "
            f"{hp.num_classes}: they must match"
        )
    hp.objective.check_frozen(name, definition)
    params = run.hp.objective.net_params(run.state.ema_params[0])
    check_layout(params, definition.abstract_params(), what)
    record = {"source": str(run.workdir), "step": run.step, "config": run.config.to_dict()}
    return LoadedFrozen(definition, params, record)


def load_frozen(hp: TrainHParams, mesh: Mesh | None = None) -> dict[str, LoadedFrozen]:
    """Every frozen network ``hp``'s objective declares, read once from its source onto
    ``mesh`` (the training loop's; default: one device, as ``create_train_state`` keeps a
    state); {} for an objective that reads none."""
    specs = hp.objective.frozen_networks()
    if not specs:
        return {}
    mesh = parallel.make_mesh(devices=jax.devices()[:1]) if mesh is None else mesh
    return {name: load_one(hp, name, spec, mesh) for name, spec in specs.items()}


def frozen_records(loaded: dict[str, LoadedFrozen]) -> dict[str, Any]:
    """What a checkpoint stores about ``loaded`` (see ``Checkpointer.save(frozen=)``)."""
    return {name: f.record for name, f in loaded.items()}
