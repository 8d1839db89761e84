"""Frozen parameters from another run: sCD's TrigFlow teacher.

A teacher is a finished work directory. Its own saved config (stored with every checkpoint)
rebuilds its abstract TrainState, so its checkpoint is restored straight into the shardings
the student wants; the first EMA tree's network part is the teacher. Loading runs once, when
a fresh state is created; afterwards the teacher lives in ``TrainState.frozen`` and is
checkpointed with the run, so a resume never needs the teacher directory again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from jax.sharding import NamedSharding

from cmjax.errors import ConfigError
from cmjax.objectives.base import Objective


def _mesh_of(like: Any):
    from cmjax import parallel

    for leaf in jax.tree.leaves(like):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return parallel.make_mesh({}, devices=jax.devices()[:1])


def load_run_ema(workdir: str | Path, like: Any = None) -> tuple[dict[str, Any], Any, int]:
    """(saved config, network params of the first EMA tree, step) of the newest checkpoint in
    ``workdir``, restored onto the mesh of ``like``'s shardings (default: one device)."""
    from cmjax import parallel
    from cmjax.checkpoint import Checkpointer
    from cmjax.hparams import TrainHParams

    path = Path(workdir)
    if not (path / "checkpoints").is_dir():
        raise ConfigError(
            f"teacher {str(workdir)!r} is not a work directory with checkpoints; point "
            "config.objective.teacher at a finished TrigFlow run's --workdir"
        )
    checkpointer = Checkpointer(path, read_only=True)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise ConfigError(f"teacher {str(workdir)!r} has no complete checkpoint")
        config = checkpointer.restored_config(step)
        abstract = parallel.abstract_train_state(config, _mesh_of(like))
        state = checkpointer.restore(abstract, step)
    finally:
        checkpointer.close()
    objective = TrainHParams.from_config(config).objective
    return config, objective.net_params(state.ema_params[0]), step


def check_same_layout(loaded: Any, like: Any, what: str) -> None:
    """ConfigError unless ``loaded`` has the tree structure and leaf shapes of ``like``."""
    if jax.tree.structure(loaded) != jax.tree.structure(like):
        raise ConfigError(
            f"{what}'s network parameters do not fit this run's network: use the same "
            "config.model (name, widths, blocks, time embedding) as the teacher run"
        )
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(like), strict=True):
        if a.shape != b.shape:
            raise ConfigError(
                f"{what}'s parameter shapes differ from this run's network ({a.shape} vs "
                f"{b.shape}): use the same config.model as the teacher run"
            )


def load_teacher(workdir: str | Path, like: Any, expect: Mapping[str, Any]) -> Any:
    """A TrigFlow run's EMA network parameters, checked against ``like`` (this run's network
    parameters) and ``expect`` (objective name, sigma_data, noise_cond_scale)."""
    config, params, step = load_run_ema(workdir, like)
    name = dict(config.get("objective", {})).get("name")
    if name != expect["name"]:
        raise ConfigError(
            f"teacher {str(workdir)!r} was trained with objective {name!r}; sCD distills a "
            f"{expect['name']!r} run"
        )
    sd = float(dict(config["objective"]).get("sigma_data", 0.5))
    scale = float(dict(config["model"]).get("noise_cond_scale", 1.0))
    if (sd, scale) != (expect["sigma_data"], expect["noise_cond_scale"]):
        raise ConfigError(
            f"teacher {str(workdir)!r} has sigma_data={sd}, noise_cond_scale={scale}; this run "
            f"has {expect['sigma_data']}, {expect['noise_cond_scale']}: they must match"
        )
    check_same_layout(params, like, f"teacher {str(workdir)!r} (step {step})")
    return params


def attach_frozen(state, objective: Objective):
    """``state`` with ``frozen`` replaced by the objective's loaded values, placed in the
    shardings of the placeholders it replaces."""
    if state.frozen is None:
        return state
    values = objective.load_frozen(state.frozen)
    placed = jax.tree.map(
        lambda v, p: jax.device_put(v.astype(p.dtype), p.sharding), values, state.frozen
    )
    return state.replace(frozen=placed)
