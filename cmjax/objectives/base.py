"""The objective seam: what every training objective provides to the one shared core.

An objective is a frozen, hashable dataclass built once from ``config.objective``. It owns
three small pure pieces; everything else (the train step, optimizer, EMA, sharding,
checkpoints, data, loop, sampler jit and CLIs) is shared:

- ``loss(params, apply_fn, x, labels, rng, step)``: the per-example loss (B,) and metrics
  (objectives with frozen parameters, e.g. sCD's teacher, also take ``frozen=``);
- its parametrization: how the raw network output becomes a denoiser / consistency
  function / velocity (``params`` may hold extra trained pieces beside the network, e.g. an
  adaptive loss weight; ``net_params`` picks out the network's);
- its samplers: named ``SamplerPlan`` defaults and ``sample(..., plan)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax

from cmjax.errors import ConfigError

ApplyFn = Callable[..., jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class SamplerPlan:
    """One sampling procedure: an objective-specific ``method`` and its decreasing ``times``.

    ``times`` are noise levels sigma (iCT, ECT, EDM) or times t (TrigFlow, sCT, MeanFlow),
    starting at the largest; ``nfe`` is the number of network evaluations per sample.
    """

    method: str
    times: tuple[float, ...]
    nfe: int

    def describe(self) -> str:
        shown = ", ".join(f"{t:.4g}" for t in self.times[:4])
        more = ", ..." if len(self.times) > 4 else ""
        return f"{self.method} at [{shown}{more}] ({self.nfe} NFE)"


@dataclasses.dataclass(frozen=True)
class ObjectiveContext:
    """What an objective may read from the rest of the config when it is built."""

    data_shape: tuple[int, ...]
    total_steps: int
    noise_cond_scale: float
    sampling: Mapping[str, Any]


class Objective:
    """Base class; subclasses are frozen dataclasses registered in ``cmjax.objectives``.

    ``SAMPLING_KEYS``: the keys of ``config.sampling`` this objective reads (others are
    errors, so nothing is silently ignored).
    """

    name: ClassVar[str]
    SAMPLING_KEYS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """This objective's ``config.objective`` keys and their paper defaults (None: derived)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, section: Mapping[str, Any], ctx: ObjectiveContext) -> Objective:
        """Build from ``config.objective`` (validated against ``defaults()``) and ``ctx``."""
        raise NotImplementedError

    # -- parameters ------------------------------------------------------------------------
    def init_params(self, net_params: Any, rng: jax.Array) -> Any:
        """The trained parameters around freshly initialized network parameters."""
        del rng
        return net_params

    def net_params(self, params: Any) -> Any:
        """The network's part of ``params`` (what samplers and ``init_from`` use)."""
        return params

    def replace_net_params(self, params: Any, net_params: Any) -> Any:
        """``params`` with its network part replaced (``init_from``)."""
        del params
        return net_params

    def init_frozen(self, net_params: Any) -> Any:
        """The structure of the frozen (never trained) parameters this objective reads, e.g.
        sCD's teacher, kept in ``TrainState.frozen``; None (the default) when it has none.
        Built inside the jitted init from fresh network parameters: placeholders only, the
        real values are loaded by ``cmjax.teacher.attach_frozen`` (see ``load_frozen``)."""
        del net_params
        return None

    def load_frozen(self, like: Any) -> Any:
        """The frozen parameters' values on the host, laid out like ``like`` (the
        ``init_frozen`` placeholders, possibly abstract with shardings); only called when
        ``init_frozen`` is not None."""
        raise NotImplementedError

    # -- training --------------------------------------------------------------------------
    def loss(
        self,
        params: Any,
        apply_fn: ApplyFn,
        x: jax.Array,
        labels: jax.Array | None,
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, Metrics]:
        """(per-example loss (B,) float32, metrics of scalars) for data ``x`` (B, ...).

        The train step passes ``frozen=state.frozen`` as well when the objective has frozen
        parameters (``init_frozen`` not None); objectives without them need not accept it."""
        raise NotImplementedError

    # -- sampling --------------------------------------------------------------------------
    def sampler_plans(self) -> dict[str, SamplerPlan]:
        """Named default samplers, used for the loop's sample grids and in-loop evaluation."""
        raise NotImplementedError

    def plan(
        self,
        steps: int | None = None,
        times: Sequence[float] | None = None,
        method: str | None = None,
    ) -> SamplerPlan:
        """A sampler from a step count (the objective's own schedule) or explicit ``times``;
        ``method`` picks among the objective's solvers (None: its default)."""
        raise NotImplementedError

    def sample(
        self,
        apply_fn: ApplyFn,
        net_params: Any,
        rng: jax.Array,
        shape: tuple[int, ...],
        plan: SamplerPlan,
        labels: jax.Array | None = None,
    ) -> jax.Array:
        """Samples of ``shape`` (B, ...) in data units, from network parameters."""
        raise NotImplementedError


def read_section(
    section: Mapping[str, Any], name: str, defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``defaults`` updated by ``section`` (minus ``name``); unknown keys raise ConfigError."""
    values = {k: v for k, v in dict(section).items() if k != "name"}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join('config.objective.' + k for k in unknown)} for "
            f"objective {name!r}; its keys are {sorted(defaults)}"
        )
    out = dict(defaults)
    out.update({k: v for k, v in values.items() if v is not None})
    return out


def check_sampling_keys(cls: type[Objective], sampling: Mapping[str, Any]) -> None:
    unknown = sorted(set(sampling) - set(cls.SAMPLING_KEYS))
    if unknown:
        raise ConfigError(
            f"config.sampling.{', config.sampling.'.join(unknown)} not used by objective "
            f"{cls.name!r}; its sampling keys are {sorted(cls.SAMPLING_KEYS)}"
        )


def check_times(times: Sequence[float], lo: float, hi: float, what: str) -> tuple[float, ...]:
    """``times`` as a strictly decreasing tuple inside (lo, hi]; ValueError otherwise."""
    out = tuple(float(t) for t in times)
    if not out or any(b >= a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"{what} must be a non-empty strictly decreasing list, got {list(out)}")
    if out[-1] <= lo or out[0] > hi:
        raise ValueError(f"{what} must lie in ({lo}, {hi}], got {list(out)}")
    return out
