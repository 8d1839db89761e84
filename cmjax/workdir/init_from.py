"""``config.init_from``: start a run from another run's EMA network parameters.

``config.init_from`` names a work directory (its newest checkpoint is used) or one orbax step
directory ``<workdir>/checkpoints/<step>``. The source run's saved config rebuilds its
abstract state (any objective, optimizer or EMA rates), the checkpoint is restored onto this
run's mesh, and the network part of its first EMA tree becomes this run's generator
parameters. The new run keeps step 0, a freshly initialized optimizer, its EMA trees equal to
the loaded parameters, and whatever else its objective trains beside the network (freshly
initialized). This is how ECT (and sCT / sCD) start from an EDM diffusion run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
from flax import traverse_util
from jax.sharding import Mesh

from cmjax.config.hparams import TrainHParams
from cmjax.core.state import TrainState, with_generator_network
from cmjax.errors import ConfigError
from cmjax.models import model_name
from cmjax.workdir.runs import Run, read_run

log = logging.getLogger("cmjax")


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
    flat = traverse_util.flatten_dict(dict(tree), sep="/")
    return {k: (tuple(v.shape), v.dtype) for k, v in flat.items()}


def check_same_network(
    source: Any, target: Any, source_model: str, target_model: str, init_from: str
) -> None:
    """ConfigError naming the first parameter path whose presence or shape differs."""
    a, b = _shapes(source), _shapes(target)
    for path in sorted(set(a) | set(b)):
        sa = a[path][0] if path in a else "absent"
        sb = b[path][0] if path in b else "absent"
        if sa != sb:
            raise ConfigError(
                f"config.init_from={init_from}: network parameter {path} is {sa} in the source "
                f"run (model {source_model!r}) but {sb} in this run (model {target_model!r}); "
                "init_from needs the same network (config.model) in both runs"
            )


def load_source_ema(init_from: str | Path, mesh: Mesh) -> tuple[Any, Run]:
    """(network parameters of the source's first EMA tree, the source run), on ``mesh``."""
    run = read_run(init_from, mesh=mesh, what="config.init_from")
    return run.hp.objective.net_params(run.state.ema_params[0]), run


def apply_init_from(hp: TrainHParams, state: TrainState, mesh: Mesh) -> TrainState:
    """``state`` (a fresh step-0 state) started from ``hp.init_from``; unchanged if unset."""
    if not hp.init_from:
        return state
    objective = hp.objective
    net, src = load_source_ema(hp.init_from, mesh)
    src_model = str(dict(src.config.get("model", {})).get("name"))
    this_model = model_name(hp.model)
    check_same_network(net, objective.net_params(state.params), src_model, this_model, hp.init_from)
    new = with_generator_network(state, objective, net)
    n = sum(int(a.size) for a in jax.tree.leaves(net))
    log.info(
        "init_from %s: step %d of a %r run (model %r), its EMA at rate %s: %s network "
        "parameters; fresh optimizer, step 0",
        hp.init_from,
        src.step,
        src.hp.objective.name,
        src_model,
        src.state.ema_rates[0],
        f"{n:,}",
    )
    return new
