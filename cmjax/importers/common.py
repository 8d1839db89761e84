"""What every importer shares: name/shape mapping with clear errors, configs, the work directory.

An importer turns a published checkpoint's flat ``{name: array}`` into a cmjax network's
parameter tree. It names, for every source parameter, the cmjax parameter it becomes and how
its array is laid out (:class:`Target`); :func:`map_parameters` applies that, checking names
and shapes against the cmjax network built from the settings the file implies, and fails on
the first parameter that does not fit, naming it and those settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from ml_collections import config_dict

from cmjax.config.sections import (
    add_run_sections,
    data_section,
    objective_section,
    optim_section,
)
from cmjax.errors import CheckpointImportError
from cmjax.models import build_model


@dataclass(frozen=True)
class Target:
    """Where one source array goes: the cmjax parameter path ("A_0/Conv_1/kernel") and how
    the array is re-laid out on the way (identity by default)."""

    path: str
    transform: Callable[[np.ndarray], np.ndarray] | None = None


Rename = Callable[[str], Target | None]


def torch_conv(w: np.ndarray) -> np.ndarray:
    """PyTorch conv weight (out, in, kh, kw) -> flax (kh, kw, in, out)."""
    return np.transpose(w, (2, 3, 1, 0))


def torch_conv1x1_as_dense(w: np.ndarray) -> np.ndarray:
    """PyTorch 1x1 conv / conv1d weight (out, in[, 1[, 1]]) -> flax Dense kernel (in, out)."""
    return np.transpose(w.reshape(w.shape[0], w.shape[1]))


def torch_linear(w: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight (out, in) -> flax Dense kernel (in, out)."""
    return np.transpose(w)


def describe(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def map_parameters(
    source: Mapping[str, np.ndarray],
    rename: Rename,
    abstract_params: Any,
    *,
    what: str,
    settings: Mapping[str, Any],
    ignore: Callable[[str], bool] = lambda name: False,
) -> dict:
    """The cmjax parameter tree (float32 numpy) holding ``source``'s arrays.

    ``abstract_params``: the cmjax network's parameters (shapes) for ``settings``, the network
    settings the file implies (written into every error so a user knows which config fits).
    Source names are visited in the file's order; ``ignore``d names are skipped (buffers).
    """
    targets = {"/".join(k): v.shape for k, v in flatten_dict(abstract_params).items()}
    hint = f"the file implies a cmjax {describe(settings)}"
    filled: dict[str, np.ndarray] = {}
    for name, array in source.items():
        if ignore(name):
            continue
        array = np.asarray(array)
        target = rename(name)
        if target is None or target.path not in targets:
            where = "" if target is None else f" (would be cmjax {target.path}, which it lacks)"
            raise CheckpointImportError(
                f"{what}: parameter {name!r} of shape {array.shape} does not map to the cmjax "
                f"network{where}; {hint}"
            )
        value = target.transform(array) if target.transform else array
        if value.shape != targets[target.path]:
            raise CheckpointImportError(
                f"{what}: parameter {name!r} of shape {array.shape} does not fit cmjax "
                f"{target.path} of shape {targets[target.path]}; {hint}"
            )
        if target.path in filled:
            raise CheckpointImportError(
                f"{what}: parameters map twice to cmjax {target.path} (second: {name!r})"
            )
        filled[target.path] = np.asarray(value, np.float32)
    missing = [p for p in targets if p not in filled]
    if missing:
        raise CheckpointImportError(
            f"{what}: the file has no parameter for cmjax {missing[0]} "
            f"(and {len(missing) - 1} more); {hint}"
        )
    return unflatten_dict({tuple(k.split("/")): v for k, v in filled.items()})


def abstract_network_params(
    model_config: Mapping[str, Any], shape: tuple[int, ...], num_classes: int
) -> Any:
    """The parameter shapes of the cmjax network ``model_config`` (nothing allocated)."""

    settings = describe({**model_config, "image_shape": tuple(shape)})
    try:
        model = build_model(model_config)
        x = jnp.zeros((1, *shape), jnp.float32)
        labels = jnp.zeros((1,), jnp.int32) if num_classes else None
        return jax.eval_shape(
            lambda: model.init(jax.random.key(0), x, jnp.zeros((1,), jnp.float32), labels, False)
        )["params"]
    except ValueError as e:
        raise CheckpointImportError(
            f"the file implies a cmjax {settings}, which cmjax cannot build: {e}"
        ) from None


def count(names: Iterable[str], pattern: str) -> int:
    """How many distinct matches of the regex group 1 in ``names``."""
    rx = re.compile(pattern)
    return len({m.group(1) for n in names if (m := rx.match(n))})


def make_config(
    *,
    data_name: str,
    shape: tuple[int, int, int],
    num_classes: int,
    model: Mapping[str, Any],
    objective: str,
    sampling: Mapping[str, Any] | None,
    ema_rates: tuple[float, ...],
    objective_overrides: Mapping[str, Any] | None = None,
) -> config_dict.ConfigDict:
    """A complete cmjax config for an imported network (data, model, objective, run sections).

    Training settings (batch size, steps, learning rate) are cmjax's paper-config defaults; a
    run that fine-tunes from the import (``config.init_from``) brings its own.
    """
    config = config_dict.ConfigDict()
    config.seed = 0
    config.data = data_section(data_name, tuple(shape), num_classes=num_classes, random_flip=True)
    config.model = config_dict.ConfigDict(dict(model))
    config.objective = objective_section(objective, **dict(objective_overrides or {}))
    config.optim = optim_section()
    config.training = config_dict.ConfigDict(
        dict(total_steps=400_000, batch_size=512, ema_rates=tuple(ema_rates))
    )
    add_run_sections(config, sampling=sampling)
    return config


def write_workdir(
    workdir: str | Path, config: config_dict.ConfigDict, net_params: Any, step: int = 0
) -> Path:
    """Write ``net_params`` as a cmjax checkpoint (params = every EMA tree = the imported
    weights, fresh optimizer state, step ``step``) plus ``config`` into ``workdir``.

    ``cmjax-sample``, ``cmjax-fid`` and ``config.init_from`` read it like a trained run.
    """
    from cmjax.config.hparams import TrainHParams
    from cmjax.core.state import TrainState, optimizer
    from cmjax.workdir.checkpoint import Checkpointer

    workdir = Path(workdir)
    if (workdir / "checkpoints").exists() and any((workdir / "checkpoints").iterdir()):
        raise CheckpointImportError(
            f"{workdir} already holds checkpoints; import into a new --workdir"
        )
    hp = TrainHParams.from_config(config)
    tx = optimizer(hp.optim)
    net = jax.tree.map(jnp.asarray, net_params)
    params = hp.objective.init_params(net, jax.random.key(hp.seed))
    state = TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        ema_params=tuple(jax.tree.map(jnp.copy, params) for _ in hp.ema_rates),
        opt_state=tx.init(params),
        model=hp.model,
        tx=tx,
        ema_rates=hp.ema_rates,
    )
    checkpointer = Checkpointer(workdir, async_save=False)
    try:
        checkpointer.save(step, state, config, force=True)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    return workdir
