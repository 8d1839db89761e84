"""cmjax: consistency models (iCT and successors) trained and sampled in JAX/Flax.

The names below load on first use, so ``import cmjax`` itself imports no JAX:

    config = cmjax.load_config("configs/default.py")
    hp = cmjax.TrainHParams.from_config(config)          # the one resolution
    state = cmjax.create_train_state(hp, jax.random.key(0), frozen=cmjax.load_frozen(hp))
    train_step = jax.jit(cmjax.make_train_step(hp))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "cmjax.errors",
    "UserError": "cmjax.errors",
    "load_config": "cmjax.config.loading",
    "TrainHParams": "cmjax.config.hparams",
    "TrainState": "cmjax.core.state",
    "create_train_state": "cmjax.core.state",
    "make_train_step": "cmjax.core.step",
    "load_frozen": "cmjax.workdir.frozen",
    "read_run": "cmjax.workdir.runs",
    "train_and_evaluate": "cmjax.training.loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cmjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
