"""Training objectives behind ``config.objective.name``; see ``cmjax.objectives.base``.

| name | what | spec |
| --- | --- | --- |
| ``ict`` | consistency training from scratch (Song & Dhariwal 2023) | DESIGN.md §1 |
| ``edm`` | EDM diffusion, Heun sampler (Karras et al. 2022) | OBJECTIVES.md §2 |
| ``ect`` | easy consistency tuning, from scratch or an EDM run (Geng et al.) | OBJECTIVES.md §3 |
| ``trigflow`` | TrigFlow diffusion, DDIM sampler (Lu & Song 2024) | OBJECTIVES.md §4 |
| ``sct`` | continuous-time consistency training (Lu & Song 2024) | OBJECTIVES.md §4 |
| ``scd`` | continuous-time consistency distillation from a TrigFlow teacher | OBJECTIVES.md §4 |
| ``meanflow`` | average-velocity flow, 1-step sampling (Geng et al. 2025) | OBJECTIVES.md §5 |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cmjax.errors import ConfigError
from cmjax.objectives.base import Objective, ObjectiveContext, SamplerPlan
from cmjax.objectives.ect import ECT
from cmjax.objectives.edm import EDM
from cmjax.objectives.ict import ICT
from cmjax.objectives.meanflow import MeanFlow
from cmjax.objectives.trigflow import SCD, SCT, TrigFlow

OBJECTIVES: dict[str, type[Objective]] = {
    "ict": ICT,
    "edm": EDM,
    "ect": ECT,
    "trigflow": TrigFlow,
    "sct": SCT,
    "scd": SCD,
    "meanflow": MeanFlow,
}


def objective_section(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config.objective`` as a dict; a config saved before objectives (``config.ict``) is iCT."""
    if "objective" in config:
        return dict(config["objective"])
    if "ict" in config:  # work directories written by cmjax 0.1
        return {"name": "ict", **dict(config["ict"])}
    raise ConfigError(
        "config has no section 'objective'; add config.objective.name (one of "
        f"{sorted(OBJECTIVES)}), see configs/default.py"
    )


def build_objective(config: Mapping[str, Any], ctx: ObjectiveContext) -> Objective:
    """The objective named by ``config.objective.name``, its keys validated."""
    section = objective_section(config)
    name = section.get("name")
    if name not in OBJECTIVES:
        raise ConfigError(
            f"unknown config.objective.name {name!r}; choose one of {sorted(OBJECTIVES)}"
        )
    return OBJECTIVES[name].from_config(section, ctx)


__all__ = [
    "ECT",
    "EDM",
    "ICT",
    "OBJECTIVES",
    "MeanFlow",
    "SCD",
    "SCT",
    "Objective",
    "ObjectiveContext",
    "SamplerPlan",
    "TrigFlow",
    "build_objective",
    "objective_section",
]
