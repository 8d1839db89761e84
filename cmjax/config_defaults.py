"""Config sections shared by the files in configs/: the objective, the optimizer, run settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ml_collections import config_dict


def objective_section(name: str = "ict", **overrides) -> config_dict.ConfigDict:
    """``config.objective``: ``name`` and that objective's keys at their paper defaults.

    Keys whose default is derived (None, e.g. iCT's Pseudo-Huber c) become float placeholders
    that ``--config.objective.KEY=value`` can set.
    """
    from cmjax.objectives import OBJECTIVES

    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    section: dict[str, Any] = {"name": name, **OBJECTIVES[name].defaults()}
    unknown = sorted(set(overrides) - set(section))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} for objective {name!r}")
    section.update(overrides)
    return config_dict.ConfigDict(
        {k: config_dict.placeholder(float) if v is None else v for k, v in section.items()}
    )


def ema_rate_for_half_life(half_life_images: float, batch_size: int) -> float:
    """The per-step EMA rate whose weights halve every ``half_life_images`` training images:
    0.5 ** (batch_size / half_life_images) (EDM's ema_halflife_kimg as a rate)."""
    return 0.5 ** (batch_size / half_life_images)


def parse_variant(
    arg: str | None, kinds: tuple[str, ...], default_kind: str, objectives: Mapping[str, Any]
) -> tuple[str, str]:
    """(kind, objective) from a comma-separated variant such as ``"two_moons,sct"``: each token
    is one of ``kinds`` (a distribution, a size, ...) or an objective name (default ``ict``)."""
    kind, objective = default_kind, "ict"
    for token in filter(None, (arg or "").split(",")):
        if token in kinds:
            kind = token
        elif token in objectives:
            objective = token
        else:
            raise ValueError(
                f"unknown variant token {token!r}; use any of {sorted(kinds)} and one of "
                f"the objectives {sorted(objectives)}, comma-separated"
            )
    return kind, objective


def ict_section(**overrides) -> config_dict.ConfigDict:
    """iCT noise schedule, curriculum, lognormal sampling and loss (DESIGN.md §1)."""
    return objective_section("ict", **overrides)


def optim_section(**overrides) -> config_dict.ConfigDict:
    """RAdam, lr 1e-4, no warmup, no clipping (iCT)."""
    section = dict(
        name="radam",
        learning_rate=1e-4,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        warmup_steps=0,
        grad_clip_norm=0.0,
    )
    section.update(overrides)
    return config_dict.ConfigDict(section)


def add_run_sections(
    config: config_dict.ConfigDict,
    two_step_sigma: float = 0.821,
    sampling: Mapping[str, Any] | None = None,
    checkpoint_every: int = 10_000,
    log_every: int = 100,
    sample_every: int = 10_000,
    num_samples: int = 64,
    eval_every: int = 0,
    eval_samples: int = 50_000,
) -> config_dict.ConfigDict:
    """Add the logging, sampling, checkpoint and mesh settings every runnable config has.

    ``sampling``: the objective's sampler keys (default: consistency models'
    ``two_step_sigma``; EDM: ``num_steps``, ``solver``).
    """
    config.training.update(log_every=log_every, sample_every=sample_every, num_samples=num_samples)
    config.checkpoint = config_dict.ConfigDict(
        dict(every_steps=checkpoint_every, keep=3, milestone_every=0, async_save=True)
    )
    config.mesh = config_dict.ConfigDict(dict(fsdp=1, dcn_data=1, multiprocess=False))
    # A work directory (or <workdir>/checkpoints/<step>) whose EMA network starts a fresh run.
    config.init_from = ""
    config.sampling = config_dict.ConfigDict(
        dict(sampling) if sampling is not None else dict(two_step_sigma=two_step_sigma)
    )
    # FID needs inception_path (see cmjax/evaluation/inception.py) and ref_stats (mu/sigma npz).
    config.eval = config_dict.ConfigDict(
        dict(
            every_steps=eval_every,
            num_samples=eval_samples,
            batch_size=500,
            inception_path="",
            ref_stats="",
        )
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
