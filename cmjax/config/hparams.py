"""The one resolution of a config: an ml_collections ConfigDict -> frozen, hashable
hyperparameters (:class:`TrainHParams`), built once per run at the top of the loop.

Every section is a frozen dataclass whose fields are its keys and whose field defaults are
the only place a default is written; :func:`read_section` checks a section's keys against the
fields (an unknown key is an error naming the known ones) and converts the values to the
fields' types. The objective's keys are its own dataclass fields (``cmjax.objectives.base
.option`` marks those read from ``sampling``, ``model`` or ``training``). Below the loop
nothing reads a ConfigDict: the step, the state, the evaluator, the samplers and LCSC take a
``TrainHParams``, so a config edit after it was built cannot change what runs.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

from cmjax.data.spec import DataHParams
from cmjax.errors import ConfigError
from cmjax.models import build_model
from cmjax.objectives import OBJECTIVES, Objective, ObjectiveContext
from cmjax.objectives.base import config_fields

__all__ = [
    "CheckpointHParams",
    "ConfigError",
    "DataHParams",
    "EvalHParams",
    "MeshHParams",
    "NetworkHParams",
    "OptimHParams",
    "TrainHParams",
    "TrainingHParams",
    "read_section",
    "validate_config",
]

TOP_KEYS = (
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
    "networks",
)


# -- reading a section into a dataclass --------------------------------------------------------
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` (int, float, bool, str, tuple[X, ...], X | None)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where)
    if origin is tuple:
        if isinstance(value, str) or not hasattr(value, "__iter__"):
            raise ConfigError(f"{where} must be a list or tuple, got {value!r}")
        item = args[0] if args else Any
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where} must be True or False, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _as_dict(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    if hasattr(section, "to_dict"):
        return section.to_dict()
    return dict(section)


def read_section(cls: type, section: Any, name: str, **fixed: Any) -> Any:
    """``cls(**values)`` from the config section ``config.<name>``: every key must be a field
    of ``cls`` (ConfigError naming the unknown ones and the known keys); a missing key or
    None takes the field's default; ``fixed`` values are passed as they are."""
    values = _as_dict(section)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in fixed}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'config.{name}.{k}' for k in unknown)}; "
            f"the keys of config.{name} are {sorted(fields)}"
        )
    hints = _hints(cls)
    out = {
        k: _convert(v, hints[k], f"config.{name}.{k}") for k, v in values.items() if v is not None
    }
    missing = [
        k
        for k, f in fields.items()
        if k not in out
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"config needs {', '.join(f'config.{name}.{k}' for k in missing)}")
    return cls(**out, **fixed)


def section_defaults(cls: type, **overrides: Any) -> dict[str, Any]:
    """The keys of a section dataclass at their defaults (None where it has none), updated
    by ``overrides``: what the config files write (``cmjax.config.sections``)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    unknown = sorted(set(overrides) - set(out))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} of {cls.__name__}")
    out.update(overrides)
    return out


def _positive(value: int, where: str, zero_ok: bool = False) -> None:
    if value < (0 if zero_ok else 1):
        raise ConfigError(
            f"{where} must be a {'non-negative' if zero_ok else 'positive'} integer, got {value}"
        )


# -- the sections ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OptimHParams:
    """``config.optim`` (and each ``config.networks.<name>.optim``): RAdam (iCT: lr 1e-4, no
    warmup, no clipping) or Adam."""

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
        _positive(self.warmup_steps, "config.optim.warmup_steps", zero_ok=True)


@dataclasses.dataclass(frozen=True)
class TrainingHParams:
    """``config.training``: the run's length, batch, EMA rates and reporting."""

    total_steps: int
    batch_size: int
    ema_rates: tuple[float, ...] = (0.99993,)
    log_every: int = 100
    sample_every: int = 0  # 0: no sample grids
    num_samples: int = 64  # per sample grid

    def __post_init__(self):
        for key in ("total_steps", "batch_size", "log_every", "num_samples"):
            _positive(getattr(self, key), f"config.training.{key}")
        _positive(self.sample_every, "config.training.sample_every", zero_ok=True)
        _check_ema_rates(self.ema_rates, "config.training.ema_rates")


@dataclasses.dataclass(frozen=True)
class CheckpointHParams:
    """``config.checkpoint``: save every ``every_steps`` (and at the end), keep the last
    ``keep`` plus every ``milestone_every``-th (0: none)."""

    every_steps: int = 1000
    keep: int = 3
    milestone_every: int = 0
    async_save: bool = True

    def __post_init__(self):
        _positive(self.every_steps, "config.checkpoint.every_steps")
        if self.keep < 1:
            raise ConfigError(
                f"config.checkpoint.keep must be >= 1 (the final checkpoint is one of them), "
                f"got {self.keep}"
            )
        _positive(self.milestone_every, "config.checkpoint.milestone_every", zero_ok=True)


@dataclasses.dataclass(frozen=True)
class MeshHParams:
    """``config.mesh``: the ('data', 'fsdp') device mesh; ``dcn_data`` slices on pods."""

    fsdp: int = 1
    dcn_data: int = 1
    multiprocess: bool = False

    def __post_init__(self):
        _positive(self.fsdp, "config.mesh.fsdp")
        _positive(self.dcn_data, "config.mesh.dcn_data")


@dataclasses.dataclass(frozen=True)
class EvalHParams:
    """``config.eval``: in-loop sample quality every ``every_steps`` (0: off) and at the end."""

    every_steps: int = 0
    num_samples: int = 1000
    batch_size: int = 500
    inception_path: str = ""
    ref_stats: str = ""

    def __post_init__(self):
        _positive(self.every_steps, "config.eval.every_steps", zero_ok=True)
        _positive(self.num_samples, "config.eval.num_samples")
        _positive(self.batch_size, "config.eval.batch_size")


@dataclasses.dataclass(frozen=True)
class NetworkHParams:
    """One trained network beside the generator (``config.networks.<name>``): its module,
    optimizer and EMA rates (none unless asked)."""

    name: str
    model: Any  # flax.linen.Module, built once
    optim: OptimHParams
    ema_rates: tuple[float, ...] = ()


def _check_ema_rates(rates: tuple[float, ...], where: str) -> None:
    if not all(0.0 <= r < 1.0 for r in rates):
        raise ConfigError(f"{where}: EMA rates must lie in [0, 1), got {rates}")
    if len(set(rates)) != len(rates):
        raise ConfigError(f"{where}: EMA rates must be distinct, got {rates}")


def objective_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config.objective`` as a dict; a config saved before objectives (``config.ict``) is iCT."""
    if "objective" in config:
        return _as_dict(config["objective"])
    if "ict" in config:  # work directories written by cmjax 0.1
        return {"name": "ict", **_as_dict(config["ict"])}
    raise ConfigError(
        "config has no section 'objective'; add config.objective.name (one of "
        f"{sorted(OBJECTIVES)}), see configs/default.py"
    )


def objective_class(config: Mapping[str, Any]) -> type[Objective]:
    name = objective_config(config).get("name")
    if name not in OBJECTIVES:
        raise ConfigError(
            f"unknown config.objective.name {name!r}; choose one of {sorted(OBJECTIVES)}"
        )
    return OBJECTIVES[name]


def _build_model(model: Mapping[str, Any], where: str) -> Any:
    try:
        return build_model(model)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _build_objective(
    cls: type[Objective], config: Mapping[str, Any], ctx: ObjectiveContext
) -> Objective:
    """The objective from its keys in config.objective / sampling / model / training; keys of
    config.objective and config.sampling it does not have are errors."""
    sections = {
        "objective": {k: v for k, v in objective_config(config).items() if k != "name"},
        "sampling": _as_dict(config.get("sampling")),
        "model": _as_dict(config.get("model")),
        "training": _as_dict(config.get("training")),
    }
    fields = config_fields(cls)
    hints = _hints(cls)
    for strict in ("objective", "sampling"):
        known = {k for s, k, _ in fields if s == strict}
        unknown = sorted(set(sections[strict]) - known)
        if unknown:
            raise ConfigError(
                f"{', '.join(f'config.{strict}.{k}' for k in unknown)} not used by objective "
                f"{cls.name!r}; its config.{strict} keys are {sorted(known)}"
            )
    values = {}
    for section, key, f in fields:
        raw = sections[section].get(key)
        values[f.name] = (
            f.default if raw is None else _convert(raw, hints[f.name], f"config.{section}.{key}")
        )
    return cls.build(values, ctx)


@dataclasses.dataclass(frozen=True)
class TrainHParams:
    """Everything a run needs, resolved once from the config: the objective, the networks,
    the optimizers and every section. Hashable; the step closes over it."""

    objective: Objective
    model: Any  # the generator's flax.linen.Module
    optim: OptimHParams
    data: DataHParams
    training: TrainingHParams
    checkpoint: CheckpointHParams = CheckpointHParams()
    mesh: MeshHParams = MeshHParams()
    eval: EvalHParams = EvalHParams()
    networks: tuple[NetworkHParams, ...] = ()
    seed: int = 0
    init_from: str = ""

    # The step's view, named as before the sections existed.
    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def total_steps(self) -> int:
        return self.training.total_steps

    @property
    def ema_rates(self) -> tuple[float, ...]:
        return self.training.ema_rates

    def network(self, name: str) -> NetworkHParams:
        """The trained network ``name`` beside the generator."""
        for net in self.networks:
            if net.name == name:
                return net
        raise KeyError(f"no network {name!r}; this run trains {[n.name for n in self.networks]}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainHParams:
        """Resolve a full training config (ConfigDict or nested dict): every key checked, every
        value converted and validated, each network and the objective built once."""
        unknown = sorted(set(config) - set(TOP_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join('config.' + k for k in unknown)}; the "
                f"top-level keys are {sorted(TOP_KEYS)}. Check the spelling against "
                "configs/default.py."
            )
        for name in ("data", "model", "optim", "training"):
            if name not in config:
                raise ConfigError(
                    f"config has no section {name!r}; see configs/default.py for a template"
                )
        objective_cls = objective_class(config)
        training_keys = {f.name for f in dataclasses.fields(TrainingHParams)}
        objective_training = {k for s, k, _ in config_fields(objective_cls) if s == "training"}
        training = _as_dict(config["training"])
        unknown = sorted(set(training) - training_keys - objective_training)
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join('config.training.' + k for k in unknown)}; the keys "
                f"of config.training are {sorted(training_keys | objective_training)}"
            )
        training_hp = read_section(
            TrainingHParams, {k: v for k, v in training.items() if k in training_keys}, "training"
        )
        data = read_section(DataHParams, config["data"], "data")
        model_cfg = _as_dict(config["model"])
        if int(model_cfg.get("num_classes", data.num_classes)) != data.num_classes:
            raise ConfigError(
                f"config.model.num_classes={model_cfg['num_classes']} differs from "
                f"config.data.num_classes={data.num_classes}"
            )
        objective = _build_objective(objective_cls, config, ObjectiveContext(data.shape))
        networks = _read_networks(config.get("networks"), objective_cls)
        return cls(
            objective=objective,
            model=_build_model(model_cfg, "config.model"),
            optim=read_section(OptimHParams, config["optim"], "optim"),
            data=data,
            training=training_hp,
            checkpoint=read_section(CheckpointHParams, config.get("checkpoint"), "checkpoint"),
            mesh=read_section(MeshHParams, config.get("mesh"), "mesh"),
            eval=read_section(EvalHParams, config.get("eval"), "eval"),
            networks=networks,
            seed=_convert(config.get("seed", 0), int, "config.seed"),
            init_from=_convert(config.get("init_from") or "", str, "config.init_from"),
        )


def _read_networks(section: Any, objective_cls: type[Objective]) -> tuple[NetworkHParams, ...]:
    """``config.networks``: exactly the trained networks the objective declares."""
    given = _as_dict(section)
    wanted = tuple(objective_cls.NETWORKS)
    if set(given) != set(wanted):
        missing, extra = sorted(set(wanted) - set(given)), sorted(set(given) - set(wanted))
        parts = [f"needs config.networks.{n}" for n in missing]
        parts += [f"does not train config.networks.{n}" for n in extra]
        raise ConfigError(
            f"objective {objective_cls.name!r} {' and '.join(parts)} (its networks beside the "
            f"generator: {list(wanted) or 'none'})"
        )
    out = []
    for name in wanted:
        net = _as_dict(given[name])
        unknown = sorted(set(net) - {"model", "optim", "ema_rates"})
        if unknown or "model" not in net:
            raise ConfigError(
                f"config.networks.{name} needs 'model' and may have 'optim' and 'ema_rates'"
                + (f"; unknown: {unknown}" if unknown else "")
            )
        rates = _convert(net.get("ema_rates", ()), tuple[float, ...], f"config.networks.{name}")
        _check_ema_rates(rates, f"config.networks.{name}.ema_rates")
        out.append(
            NetworkHParams(
                name=name,
                model=_build_model(net["model"], f"config.networks.{name}.model"),
                optim=read_section(OptimHParams, net.get("optim"), f"networks.{name}.optim"),
                ema_rates=rates,
            )
        )
    return tuple(out)


def validate_config(config: Mapping[str, Any]) -> TrainHParams:
    """Resolve ``config`` (raising a ConfigError naming every problem it finds first)."""
    return TrainHParams.from_config(config)
