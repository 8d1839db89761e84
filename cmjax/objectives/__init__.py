"""Training objectives and methods behind ``config.objective.name``; the seam is
``cmjax.objectives.base``, the equations are in docs/objectives.md.

| name | what | docs/objectives.md |
| --- | --- | --- |
| ``ict`` | consistency training from scratch (Song & Dhariwal 2023), iLCT switches | iCT |
| ``edm`` | EDM diffusion, Heun sampler (Karras et al. 2022) | EDM |
| ``ect`` | easy consistency tuning, from scratch or an EDM run (Geng et al. 2024) | ECT |
| ``trigflow`` | TrigFlow diffusion, DDIM sampler (Lu & Song 2024) | TrigFlow |
| ``sct`` | continuous-time consistency training (Lu & Song 2024) | sCT and sCD |
| ``scd`` | continuous-time consistency distillation from a TrigFlow teacher | sCT and sCD |
| ``meanflow`` | average-velocity flow, 1-step sampling (Geng et al. 2025) | MeanFlow |
| ``flow`` | flow matching / rectified flow, Euler sampler; a teacher of sCD | Flow matching |
| ``cd`` | consistency distillation from a frozen EDM teacher (Song et al. 2023) | CD |

A method of your own plugs in with :func:`register_objective` (docs/architecture.md).
"""

from __future__ import annotations

from cmjax.objectives.base import (
    GENERATOR,
    Frozen,
    FrozenNetwork,
    FrozenSpec,
    Nets,
    Objective,
    ObjectiveContext,
    Player,
    SamplerPlan,
)
from cmjax.objectives.cd import CD
from cmjax.objectives.ect import ECT
from cmjax.objectives.edm import EDM
from cmjax.objectives.flow import Flow
from cmjax.objectives.ict import ICT
from cmjax.objectives.meanflow import MeanFlow
from cmjax.objectives.scm import SCD, SCT
from cmjax.objectives.trigflow import TrigFlow

OBJECTIVES: dict[str, type[Objective]] = {
    "ict": ICT,
    "edm": EDM,
    "ect": ECT,
    "trigflow": TrigFlow,
    "sct": SCT,
    "scd": SCD,
    "meanflow": MeanFlow,
    "flow": Flow,
    "cd": CD,
}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Make ``cls`` available as ``config.objective.name = cls.name`` (usable as a class
    decorator). A run of a registered objective resumes in a process that registered it."""
    if not (isinstance(cls, type) and issubclass(cls, Objective)) or not getattr(cls, "name", ""):
        raise TypeError(f"{cls!r} is not an Objective subclass with a name")
    existing = OBJECTIVES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"objective name {cls.name!r} is taken by {existing.__name__}")
    OBJECTIVES[cls.name] = cls
    return cls


__all__ = [
    "CD",
    "ECT",
    "EDM",
    "GENERATOR",
    "ICT",
    "OBJECTIVES",
    "SCD",
    "SCT",
    "Flow",
    "Frozen",
    "FrozenNetwork",
    "FrozenSpec",
    "MeanFlow",
    "Nets",
    "Objective",
    "ObjectiveContext",
    "Player",
    "SamplerPlan",
    "TrigFlow",
    "register_objective",
]
