"""``config.init_from``: start a run from another run's EMA network parameters.

``config.init_from`` names a work directory (its newest checkpoint is used) or one orbax step
directory ``<workdir>/checkpoints/<step>``. The source run's saved config rebuilds its
abstract state (any objective, optimizer or EMA rates), the checkpoint is restored onto this
run's mesh, and the network part of its first EMA tree becomes this run's parameters. The
new run keeps step 0, a freshly initialized optimizer, its EMA trees equal to the loaded
parameters, and whatever else its objective trains beside the network (freshly initialized).
This is how ECT (and sCT / sCD) start from an EDM diffusion run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import Mesh

from cmjax import parallel
from cmjax.checkpoint import Checkpointer
from cmjax.errors import ConfigError
from cmjax.hparams import TrainHParams
from cmjax.train_state import TrainState

log = logging.getLogger("cmjax")


def resolve_source(init_from: str | Path) -> tuple[Path, int]:
    """(source work directory, step) for a work directory or a ``checkpoints/<step>`` dir."""
    path = Path(init_from).expanduser()
    if path.name.isdigit() and path.parent.name == "checkpoints" and path.is_dir():
        return path.parent.parent, int(path.name)
    if (path / "checkpoints").is_dir():
        checkpointer = Checkpointer(path, read_only=True)
        try:
            step = checkpointer.latest_step()
        finally:
            checkpointer.close()
        if step is not None:
            return path, int(step)
        raise ConfigError(f"config.init_from={init_from}: {path / 'checkpoints'} has no checkpoint")
    raise ConfigError(
        f"config.init_from={init_from} is neither a work directory with checkpoints/ nor a "
        "step directory <workdir>/checkpoints/<step>"
    )


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


def load_source_ema(init_from: str | Path, mesh: Mesh) -> tuple[Any, dict[str, Any], float, int]:
    """(network parameters of the source's first EMA tree, source config, its rate, step),
    restored onto ``mesh``."""
    workdir, step = resolve_source(init_from)
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        src_config = checkpointer.restored_config(step)
        src_abstract = parallel.abstract_train_state(src_config, mesh)
        src_state = checkpointer.restore(src_abstract, step)
    finally:
        checkpointer.close()
    src_objective = TrainHParams.from_config(src_config).objective
    net = src_objective.net_params(src_state.ema_params[0])
    return net, src_config, src_state.ema_rates[0], step


def apply_init_from(config: Mapping[str, Any], state: TrainState, mesh: Mesh) -> TrainState:
    """``state`` (a fresh step-0 state) started from ``config.init_from``; unchanged if unset."""
    init_from = str(config.get("init_from") or "")
    if not init_from:
        return state
    objective = TrainHParams.from_config(config).objective
    net, src_config, rate, step = load_source_ema(init_from, mesh)
    check_same_network(
        net,
        objective.net_params(state.params),
        str(src_config.get("model", {}).get("name")),
        str(config["model"]["name"]),
        init_from,
    )
    shardings = jax.tree.map(lambda a: a.sharding, state.params)
    params = objective.replace_net_params(state.params, net)
    params = jax.tree.map(
        lambda p, old, s: jax.device_put(p.astype(old.dtype), s), params, state.params, shardings
    )
    opt_shardings = jax.tree.map(lambda a: a.sharding, state.opt_state)
    opt_state = jax.jit(state.tx.init, out_shardings=opt_shardings)(params)
    ema = tuple(jax.tree.map(jnp.copy, params) for _ in state.ema_params)
    n = sum(int(a.size) for a in jax.tree.leaves(net))
    log.info(
        "init_from %s: step %d of a %r run (model %r), its EMA at rate %s: %s network "
        "parameters; fresh optimizer, step 0",
        init_from,
        step,
        src_config.get("objective", {}).get("name", "ict"),
        src_config.get("model", {}).get("name"),
        rate,
        f"{n:,}",
    )
    return state.replace(
        step=jnp.zeros_like(state.step), params=params, ema_params=ema, opt_state=opt_state
    )
