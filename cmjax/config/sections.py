"""Builders of the config sections the files in configs/ share.

Every default comes from the dataclass that reads the section (``cmjax.config.hparams``) or
from the objective's own fields, so a config file writes only what it changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ml_collections import config_dict

from cmjax.config.hparams import (
    CheckpointHParams,
    DataHParams,
    EvalHParams,
    MeshHParams,
    OptimHParams,
    section_defaults,
)
from cmjax.objectives import OBJECTIVES

# What a small CPU network (the toy MLP, the digits UNet) needs beside an objective's
# defaults: the TrigFlow family's times t in [0, pi/2] through a positional (low-frequency)
# embedding of c_noise = t (flow matching's t in [0, 1] too), and MeanFlow's second time
# input h = t - r.
SMALL_NETWORK_MODEL: dict[str, dict[str, Any]] = {
    "trigflow": dict(time_embedding="positional"),
    "sct": dict(time_embedding="positional"),
    "scd": dict(time_embedding="positional"),
    "meanflow": dict(second_time_input=True),
    "flow": dict(time_embedding="positional"),
}


def objective_class(name: str):
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def objective_section(name: str = "ict", **overrides) -> config_dict.ConfigDict:
    """``config.objective``: ``name`` and that objective's keys at their paper defaults.

    Keys whose default is derived (None, e.g. iCT's Pseudo-Huber c) become float placeholders
    that ``--config.objective.KEY=value`` can set.
    """
    section: dict[str, Any] = {"name": name, **objective_class(name).defaults()}
    unknown = sorted(set(overrides) - set(section))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} for objective {name!r}")
    section.update(overrides)
    return config_dict.ConfigDict(
        {k: config_dict.placeholder(float) if v is None else v for k, v in section.items()}
    )


def sampling_section(name: str, **overrides) -> config_dict.ConfigDict:
    """``config.sampling``: objective ``name``'s sampler keys at their defaults."""
    section = objective_class(name).defaults("sampling")
    unknown = sorted(set(overrides) - set(section))
    if unknown:
        raise ValueError(f"objective {name!r} has no sampling key(s) {unknown}")
    return config_dict.ConfigDict({**section, **overrides})


def data_section(name: str, shape: tuple[int, ...], **overrides) -> config_dict.ConfigDict:
    """``config.data`` with every key of every source, so ``--config.data.path=...`` (and the
    rest) work on any config from the command line."""
    return config_dict.ConfigDict(
        section_defaults(DataHParams, name=name, shape=shape, **overrides)
    )


def optim_section(**overrides) -> config_dict.ConfigDict:
    """``config.optim``: RAdam, lr 1e-4, no warmup, no clipping (iCT) unless overridden."""
    return config_dict.ConfigDict(section_defaults(OptimHParams, **overrides))


def ema_rate_for_half_life(half_life_images: float, batch_size: int) -> float:
    """The per-step EMA rate whose weights halve every ``half_life_images`` training images:
    0.5 ** (batch_size / half_life_images) (EDM's ema_halflife_kimg as a rate)."""
    return 0.5 ** (batch_size / half_life_images)


def parse_variant(arg: str | None, kinds: tuple[str, ...], default_kind: str) -> tuple[str, str]:
    """(kind, objective) from a comma-separated variant such as ``"two_moons,sct"``: each token
    is one of ``kinds`` (a distribution, a size, ...) or an objective name (default ``ict``)."""
    kind, objective = default_kind, "ict"
    for token in filter(None, (arg or "").split(",")):
        if token in kinds:
            kind = token
        elif token in OBJECTIVES:
            objective = token
        else:
            raise ValueError(
                f"unknown variant token {token!r}; use any of {sorted(kinds)} and one of "
                f"the objectives {sorted(OBJECTIVES)}, comma-separated"
            )
    return kind, objective


def set_small_objective(
    config: config_dict.ConfigDict,
    name: str,
    objectives: Mapping[str, Mapping[str, Any]] | None = None,
    sampling: Mapping[str, Mapping[str, Any]] | None = None,
) -> config_dict.ConfigDict:
    """``config.objective`` = objective ``name`` for a small CPU network: its defaults, this
    config's ``objectives[name]`` overrides, the network settings it needs
    (``SMALL_NETWORK_MODEL``) and a sampling section with ``sampling[name]`` overrides."""
    config.model.update(SMALL_NETWORK_MODEL.get(name, {}))
    config.objective = objective_section(name, **dict((objectives or {}).get(name, {})))
    config.sampling = sampling_section(name, **dict((sampling or {}).get(name, {})))
    return config


def add_run_sections(
    config: config_dict.ConfigDict,
    sampling: Mapping[str, Any] | None = None,
    checkpoint_every: int = 10_000,
    log_every: int = 100,
    sample_every: int = 10_000,
    num_samples: int = 64,
    eval_every: int = 0,
    eval_samples: int = 50_000,
) -> config_dict.ConfigDict:
    """Add the logging, sampling, checkpoint, mesh and eval settings every runnable config has.

    ``sampling``: overrides of the objective's sampler keys (``config.sampling``; a section
    already set by ``set_small_objective`` is kept when this is None).
    """
    config.training.update(log_every=log_every, sample_every=sample_every, num_samples=num_samples)
    config.checkpoint = config_dict.ConfigDict(
        section_defaults(CheckpointHParams, every_steps=checkpoint_every)
    )
    config.mesh = config_dict.ConfigDict(section_defaults(MeshHParams))
    # A work directory (or <workdir>/checkpoints/<step>) whose EMA network starts a fresh run.
    config.init_from = ""
    name = config.objective.name
    kept = "sampling" in config and set(config.sampling) <= set(sampling_section(name))
    if sampling is not None or not kept:
        config.sampling = sampling_section(name, **dict(sampling or {}))
    # FID needs inception_path (see cmjax/evaluation/inception.py) and ref_stats (mu/sigma npz).
    config.eval = config_dict.ConfigDict(
        section_defaults(EvalHParams, every_steps=eval_every, num_samples=eval_samples)
    )
    return config


def shrink_to_tiny(config: config_dict.ConfigDict, **model: object) -> config_dict.ConfigDict:
    """The ``tiny`` variant of a paper config: ``model`` widths, a CPU-sized run budget."""
    config.model.update(model)
    config.training.update(
        total_steps=40,
        batch_size=8,
        ema_rates=(0.9,),
        log_every=10,
        sample_every=40,
        num_samples=16,
    )
    config.checkpoint.every_steps = 20
    return config
