"""Frozen, hashable hyperparameters built once from an ml_collections ConfigDict.

The jitted train step closes over a ``TrainHParams``, never over a live ConfigDict, so a
config edit after the step is built cannot silently change (or fail to change) what runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from cmjax.errors import ConfigError
from cmjax.objectives import Objective, ObjectiveContext, build_objective

__all__ = ["ConfigError", "OptimHParams", "TrainHParams", "validate_config"]


def _section(config: Mapping[str, Any], name: str, known: set[str]) -> dict[str, Any]:
    if name not in config:
        raise ConfigError(f"config has no section {name!r}; see configs/default.py for a template")
    section = dict(config[name])
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'config.{name}.{k}' for k in unknown)}; "
            f"known keys of config.{name}: {sorted(known)}"
        )
    return section


# Keys of the sections that no single dataclass consumes whole (model keys are checked by
# build_model, objective and sampling keys by the objective, optim keys by OptimHParams).
KNOWN_KEYS: dict[str, set[str]] = {
    "": {
        "seed",
        "data",
        "model",
        "objective",
        "ict",  # configs saved by cmjax 0.1: read as objective "ict"
        "optim",
        "training",
        "checkpoint",
        "mesh",
        "sampling",
        "eval",
        "init_from",
    },
    "data": {
        "name",
        "shape",
        "num_classes",
        "random_flip",
        "distribution",
        "data_dir",
        "path",
        "tfds_name",
        "split",
        "resize",
    },
    "training": {
        "total_steps",
        "batch_size",
        "ema_rates",
        "log_every",
        "sample_every",
        "num_samples",
    },
    "checkpoint": {"every_steps", "keep", "milestone_every", "async_save"},
    "mesh": {"fsdp", "dcn_data", "multiprocess"},
    "eval": {"every_steps", "num_samples", "batch_size", "inception_path", "ref_stats"},
}


def validate_config(config: Mapping[str, Any]) -> None:
    """Raise a ConfigError naming every unknown key of a full training config."""
    unknown = [k for k in config if k not in KNOWN_KEYS[""]]
    for section, known in KNOWN_KEYS.items():
        if section and section in config:
            unknown += [f"{section}.{k}" for k in config[section] if k not in known]
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join('config.' + k for k in unknown)}. "
            "Check the spelling against configs/default.py."
        )
    TrainHParams.from_config(config)


@dataclasses.dataclass(frozen=True)
class OptimHParams:
    """RAdam (iCT: lr 1e-4, no warmup, no clipping) or Adam."""

    name: str = "radam"
    learning_rate: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip_norm: float = 0.0

    def __post_init__(self):
        if self.name not in ("radam", "adam"):
            raise ConfigError(f"config.optim.name must be 'radam' or 'adam', got {self.name!r}")
        if self.learning_rate <= 0:
            raise ConfigError(f"config.optim.learning_rate must be > 0, got {self.learning_rate}")


@dataclasses.dataclass(frozen=True)
class TrainHParams:
    """Everything the train step needs, resolved once from the config."""

    objective: Objective
    optim: OptimHParams
    data_shape: tuple[int, ...]
    total_steps: int
    num_classes: int = 0
    ema_rates: tuple[float, ...] = (0.99993,)
    seed: int = 0

    def __post_init__(self):
        if not all(0.0 <= r < 1.0 for r in self.ema_rates):
            raise ConfigError(f"EMA rates must lie in [0, 1), got {self.ema_rates}")
        if len(set(self.ema_rates)) != len(self.ema_rates):
            raise ConfigError(f"EMA rates must be distinct, got {self.ema_rates}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainHParams:
        optim = _section(config, "optim", {f.name for f in dataclasses.fields(OptimHParams)})
        training = dict(config["training"]) if "training" in config else {}
        data = dict(config["data"]) if "data" in config else {}
        model = dict(config["model"]) if "model" in config else {}
        for key, where in (("total_steps", training), ("shape", data)):
            if key not in where:
                raise ConfigError(
                    f"config needs {'training' if where is training else 'data'}.{key}"
                )
        data_shape = tuple(int(d) for d in data["shape"])
        total_steps = int(training["total_steps"])
        if total_steps < 1:
            raise ConfigError(f"config.training.total_steps must be >= 1, got {total_steps}")
        num_classes = int(data.get("num_classes", 0))
        if int(model.get("num_classes", num_classes)) != num_classes:
            raise ConfigError(
                f"config.model.num_classes={model['num_classes']} differs from "
                f"config.data.num_classes={num_classes}"
            )
        ctx = ObjectiveContext(
            data_shape=data_shape,
            total_steps=total_steps,
            noise_cond_scale=float(model.get("noise_cond_scale", 1.0)),
            sampling=dict(config["sampling"]) if "sampling" in config else {},
        )
        return cls(
            objective=build_objective(config, ctx),
            optim=OptimHParams(**optim),
            data_shape=data_shape,
            total_steps=total_steps,
            num_classes=num_classes,
            ema_rates=tuple(float(r) for r in training.get("ema_rates", (0.99993,))),
            seed=int(config.get("seed", 0)),
        )
