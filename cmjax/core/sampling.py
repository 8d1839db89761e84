"""The one sampler interface: any objective's ``SamplerPlan``, jitted and sharded.

``make_sampler(objective, apply_fn, shape, plan)`` returns ``draw(params, rng, labels=None)``
for the full trained ``params`` (e.g. an EMA tree); the objective picks its network's part and
runs its own procedure (consistency steps, Heun, ...). ``hp.objective.sampler_plans()`` names
the defaults ("1step"/"2step" for consistency models, "heun18" for EDM, ...).
``SamplerCache`` keeps those jitted functions for a run, so that each shape and plan compiles
once (the training loop's sample grids and its evaluation draw from one cache).
"""

from __future__ import annotations

from typing import Any

import jax

from cmjax.core.parallel import batch_sharding
from cmjax.objectives.base import ApplyFn, Objective, SamplerPlan


def sample(
    objective: Objective,
    apply_fn: ApplyFn,
    params: Any,
    rng: jax.Array,
    shape: tuple[int, ...],
    plan: SamplerPlan,
    labels: jax.Array | None = None,
) -> jax.Array:
    """Samples of ``shape`` (B, ...) from trained ``params`` (not jitted)."""
    return objective.sample(apply_fn, objective.net_params(params), rng, shape, plan, labels)


def make_sampler(
    objective: Objective,
    apply_fn: ApplyFn,
    shape: tuple[int, ...],
    plan: SamplerPlan,
    *,
    mesh=None,
):
    """A jitted ``draw(params, rng, labels=None) -> (B, ...)`` for a static sample ``shape``.

    With a ``mesh`` the samples (and labels) are sharded over its batch axes; the noise is
    the same as on one device (threefry is partitionable), so the samples are too.
    """
    out_shardings = None if mesh is None else batch_sharding(mesh, len(shape))

    def draw(params, rng, labels=None):
        return sample(objective, apply_fn, params, rng, shape, plan, labels)

    return jax.jit(draw, out_shardings=out_shardings)


class SamplerCache:
    """``make_sampler``'s jitted draw functions for one objective and network, built on first
    use and reused, keyed by (sample shape, plan, mesh): a run's repeated sample grids and
    evaluations compile each sampler once instead of on every call."""

    def __init__(self, objective: Objective, apply_fn: ApplyFn):
        self.objective, self.apply_fn = objective, apply_fn
        self._draws: dict[tuple, Any] = {}

    def get(self, shape: tuple[int, ...], plan: SamplerPlan, *, mesh=None):
        """The jitted ``draw(params, rng, labels=None) -> (B, ...)`` of ``make_sampler``."""
        key = (tuple(shape), plan, mesh)
        if key not in self._draws:
            self._draws[key] = make_sampler(
                self.objective, self.apply_fn, tuple(shape), plan, mesh=mesh
            )
        return self._draws[key]

    def __len__(self) -> int:
        return len(self._draws)
