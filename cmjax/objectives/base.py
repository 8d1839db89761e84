"""The objective seam: what every training objective or method provides to the one shared core.

An objective is a frozen, hashable dataclass whose fields are its config keys (see
:func:`option`; ``cmjax.config.hparams`` builds it once from the config, nothing here reads a
config). It owns small pure pieces; everything else (the train step, optimizers, EMA,
sharding, checkpoints, data, loop, sampler jit and CLIs) is shared:

- the losses: ``loss(params, apply_fn, x, labels, rng, step)`` for a single-network
  objective, the per-example loss (B,) and metrics; a method with several networks
  implements ``player_loss`` (below) instead;
- its parametrization: how the raw network output becomes a denoiser / consistency
  function / velocity (``params`` may hold extra trained pieces beside the network, e.g. an
  adaptive loss weight; ``net_params`` picks out the network's);
- its samplers: named ``SamplerPlan`` defaults and ``sample(..., plan)``.

Several networks (docs/architecture.md, "Several networks in one step"): a method may declare

- ``NETWORKS``: trained networks beside the generator (a discriminator, a fake score
  network, an adapter), each built from ``config.networks.<name>`` with its own model,
  optimizer and EMA rates (none unless asked);
- ``frozen_networks()``: networks it reads but never trains (a teacher of any architecture,
  a feature network, a reward model), as a :class:`FrozenSpec` naming a work directory and
  the objectives its run may have used. The loop loads them once, each with its own saved
  config building its own network (:class:`FrozenNetwork`), and checkpoints them with the
  run, so a resume never reads the source again;
- method state (``init_method_state`` / ``update_method_state``): e.g. a target network
  updated by EMA at its own rate, apart from the evaluation EMA;
- ``players()``: who is updated on which step, in order, inside the one jitted step, with a
  static schedule (alternating, k:1, 1:1): :class:`Player`. A player's parameters,
  optimizer state and EMA stay bit-identical on its off steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from cmjax.errors import ConfigError

ApplyFn = Callable[..., jax.Array]
Metrics = dict[str, jax.Array]
Batch = Mapping[str, jax.Array]
GENERATOR = "generator"  # the network samplers, EMA, LCSC, init_from and FID see


def option(default: Any, *, section: str = "objective", key: str | None = None) -> Any:
    """A dataclass field that is the config key ``config.<section>.<key>`` (``key`` defaults
    to the field's name). Plain fields are keys of ``config.objective``; this marks the ones
    read from another section (``sampling``, ``model``, ``training``) or renamed."""
    return dataclasses.field(default=default, metadata={"config": (section, key)})


def config_fields(cls: type) -> list[tuple[str, str, dataclasses.Field]]:
    """(section, key, field) of every config key of an objective dataclass, in field order."""
    out = []
    for f in dataclasses.fields(cls):
        where = f.metadata.get("config", ("objective", None))
        if where is None:
            continue
        section, key = where
        out.append((section, key or f.name, f))
    return out


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
    """What ``Objective.build`` may read beside its own keys: the data's example shape."""

    data_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Player:
    """One trained network's update inside the step: network ``name`` is updated on the steps
    k (0-based, the steps already taken) with (k - offset) % every == 0. Static, so a
    schedule never recompiles; ``every=1`` (the default) is every step, no branch at all."""

    name: str = GENERATOR
    every: int = 1
    offset: int = 0

    def __post_init__(self):
        if self.every < 1 or not 0 <= self.offset < self.every:
            raise ConfigError(
                f"player {self.name!r}: need every >= 1 and 0 <= offset < every, got "
                f"every={self.every}, offset={self.offset}"
            )

    def active(self, step: jax.Array) -> jax.Array:
        """Whether this player updates at ``step`` (a traced int32 scalar)."""
        return (jnp.asarray(step, jnp.int32) - self.offset) % self.every == 0


@dataclasses.dataclass(frozen=True)
class FrozenSpec:
    """A frozen network a method needs.

    ``loader="run"`` (the default): the work directory ``source`` (a ``cmjax-train`` or
    ``cmjax-import`` one, or ``<workdir>/checkpoints/<step>``) whose first EMA network it
    reads, trained with one of the objectives ``kinds``. Another ``loader`` names a network
    read from published weight files (``files``), e.g. ``"lpips"``
    (``cmjax.workdir.frozen.FILE_LOADERS``). ``key`` is the config key that names the source
    and ``hint`` what to set it to (for messages; an empty source is refused when the
    network is loaded)."""

    source: str
    kinds: tuple[str, ...]
    key: str
    hint: str = ""
    loader: str = "run"
    files: tuple[str, ...] = ()
    file_keys: tuple[str, ...] = ()  # the config key of each file, for messages


@dataclasses.dataclass(frozen=True)
class FrozenNetwork:
    """A frozen network's definition, built from its own run's saved config: the objective
    it was trained with (its parametrization: ``objective.denoise``, ``velocity``, ...) and
    its module. Hashable: it is a static field of the TrainState."""

    objective: Any  # Objective
    model: Any  # flax.linen.Module
    data_shape: tuple[int, ...]
    num_classes: int

    @classmethod
    def from_hparams(cls, hp: Any) -> FrozenNetwork:
        """The generator of the run whose ``TrainHParams`` is ``hp``, as a frozen network."""
        return cls(hp.objective, hp.model, hp.data_shape, hp.num_classes)

    @property
    def apply_fn(self) -> ApplyFn:
        return self.model.apply

    def abstract_params(self) -> Any:
        """Its network parameters as ShapeDtypeStructs (nothing allocated). A network that is
        no generator (a feature network) says how to call it: ``model.example_inputs()``."""
        init = self.model.init
        if hasattr(self.model, "example_inputs"):
            inputs = self.model.example_inputs()
        else:
            x = jnp.zeros((1, *self.data_shape), jnp.float32)
            labels = jnp.zeros((1,), jnp.int32) if self.num_classes else None
            inputs = (x, jnp.zeros((1,), jnp.float32), labels, False)
        return jax.eval_shape(lambda r: init({"params": r}, *inputs), jax.random.key(0))["params"]


@dataclasses.dataclass(frozen=True)
class Frozen:
    """What a loss sees of a frozen network: its definition and its parameters."""

    network: FrozenNetwork
    params: Any

    @property
    def objective(self) -> Any:
        return self.network.objective

    @property
    def apply_fn(self) -> ApplyFn:
        return self.network.apply_fn


@dataclasses.dataclass(frozen=True)
class Nets:
    """Every network a player's loss may read, at the start of its update: the trained
    networks' current parameters and apply functions by name (``GENERATOR`` included), the
    frozen networks, and the method state. The player's own parameters are the ``params``
    argument of ``player_loss`` (differentiated); everything here is read-only."""

    params: Mapping[str, Any]
    apply: Mapping[str, ApplyFn]
    frozen: Mapping[str, Frozen]
    method_state: Any = None


class Objective:
    """Base class; subclasses are frozen dataclasses registered in ``cmjax.objectives``.

    Their fields are config keys (``config.objective.<field>`` unless :func:`option` says
    otherwise); ``build`` may derive values from the data shape. ``NETWORKS``: trained
    networks beside the generator; ``BATCH_KEYS``: batch entries beyond ``x`` and ``label``.
    """

    name: ClassVar[str]
    NETWORKS: ClassVar[tuple[str, ...]] = ()
    BATCH_KEYS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def defaults(cls, section: str = "objective") -> dict[str, Any]:
        """This objective's keys of ``config.<section>`` and their defaults (None: derived)."""
        return {k: f.default for s, k, f in config_fields(cls) if s == section}

    @classmethod
    def build(cls, values: dict[str, Any], ctx: ObjectiveContext) -> Objective:
        """The objective from its config values (defaults filled, types converted); override
        to derive values (iCT's Pseudo-Huber c from the data dimension)."""
        del ctx
        return cls(**values)

    # -- what it trains and reads ----------------------------------------------------------
    def players(self) -> tuple[Player, ...]:
        """The updates of one step, in order (default: the generator, every step)."""
        return (Player(GENERATOR),)

    def frozen_networks(self) -> Mapping[str, FrozenSpec]:
        """The frozen networks this objective reads, by name (default: none)."""
        return {}

    def check_frozen(self, name: str, network: FrozenNetwork) -> None:
        """Raise a ConfigError if frozen network ``name`` does not fit this objective."""
        del name, network

    def init_from_frozen(self) -> str | None:
        """The frozen network (a teacher) whose parameters start the generator's network in a
        fresh run when the shapes allow and ``config.init_from`` is unset; None: none."""
        return None

    # -- the generator's parameters ---------------------------------------------------------
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

    # -- method state -----------------------------------------------------------------------
    def init_method_state(self, params: Mapping[str, Any], rng: jax.Array) -> Any:
        """State the method keeps beside the trained networks (e.g. a target network), from
        the fresh parameters of every trained network; None (the default): none."""
        del params, rng
        return None

    def update_method_state(
        self,
        method_state: Any,
        player: str,
        params: Mapping[str, Any],
        step: jax.Array,
        metrics: Metrics,
    ) -> Any:
        """The method state after ``player``'s update: ``params`` are every trained network's
        parameters after it, ``step`` the steps taken before this one, ``metrics`` what the
        player's loss returned beside it (e.g. statistics an EMA tracks)."""
        del player, params, step, metrics
        return method_state

    # -- training --------------------------------------------------------------------------
    def player_loss(
        self, player: str, params: Any, nets: Nets, batch: Batch, rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        """(per-example loss (B,) float32, metrics) of ``player`` w.r.t. its ``params``.

        The default serves single-network objectives: the generator's ``loss``, which also
        gets ``frozen=nets.frozen`` when the state holds frozen networks."""
        if player != GENERATOR:
            raise NotImplementedError(f"{type(self).__name__} has no player {player!r}")
        extra = {"frozen": nets.frozen} if nets.frozen else {}
        return self.loss(
            params, nets.apply[GENERATOR], batch["x"], batch.get("label"), rng, step, **extra
        )

    def loss(
        self,
        params: Any,
        apply_fn: ApplyFn,
        x: jax.Array,
        labels: jax.Array | None,
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, Metrics]:
        """(per-example loss (B,) float32, metrics of scalars) for data ``x`` (B, ...)."""
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


def check_times(times: Sequence[float], lo: float, hi: float, what: str) -> tuple[float, ...]:
    """``times`` as a strictly decreasing tuple inside (lo, hi]; ValueError otherwise."""
    out = tuple(float(t) for t in times)
    if not out or any(b >= a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"{what} must be a non-empty strictly decreasing list, got {list(out)}")
    if out[-1] <= lo or out[0] > hi:
        raise ValueError(f"{what} must lie in ({lo}, {hi}], got {list(out)}")
    return out


def one_or_two_step_plan(
    steps: int | None,
    times: Sequence[float] | None,
    method: str | None,
    *,
    name: str,
    first: float,
    second: float,
    bounds: tuple[float, float],
    what: str,
    more: Callable[[int], Sequence[float]] | None = None,
) -> SamplerPlan:
    """The few-step plan of the consistency-style samplers (iCT, ECT, sCT, MeanFlow): 1 step at
    ``first``, 2 steps at (``first``, ``second``), ``more(steps)`` times for more steps (None:
    refused), or explicit ``times`` within ``bounds``; ``method`` must be None or ``name``."""
    if method not in (None, name):
        raise ValueError(f"this objective samples with {name!r}, got {method!r}")
    if times is None:
        steps = 1 if steps is None else int(steps)
        if steps in (1, 2):
            times = [first] if steps == 1 else [first, second]
        elif more is not None:
            times = more(steps)
        else:
            raise ValueError(
                f"{name} sampling takes 1 or 2 steps from the config, got {steps}; "
                f"pass explicit {what} for more"
            )
    times = check_times(times, *bounds, what)
    return SamplerPlan(name, times, len(times))
