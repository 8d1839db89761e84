"""LCSC: linear combination of saved checkpoints (Liu et al. 2024; docs/objectives.md, LCSC).

``stack``: the candidates of a run stacked on device, combined and written as a work
directory; ``search``: their CMA-ES search against a sample-quality metric.
"""

from cmjax.lcsc.search import Scorer, SearchResult, sampler_plan, search
from cmjax.lcsc.stack import (
    Candidate,
    StackedRun,
    alpha_from_free,
    check_new_workdir,
    combine,
    combine_trees,
    free_from_alpha,
    load_stacked,
    write_combined,
)

__all__ = [
    "Candidate",
    "Scorer",
    "SearchResult",
    "StackedRun",
    "alpha_from_free",
    "check_new_workdir",
    "combine",
    "combine_trees",
    "free_from_alpha",
    "load_stacked",
    "sampler_plan",
    "search",
    "write_combined",
]
