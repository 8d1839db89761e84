"""TrainState and its construction: every network's parameters, EMA trees and optimizer
state, the frozen networks and the method state, as one pytree.

Layout (the pytree's children; a part that is empty is no child at all, so the states of
single-network objectives flatten, shard and checkpoint exactly as before the parts existed):

- ``step``; the generator's ``params``, ``ema_params`` (one tree per rate) and ``opt_state``;
- ``networks``: {name: NetState} for the trained networks beside the generator
  (``config.networks``), each with its own optimizer and EMA trees;
- ``frozen``: {name: network params} of the frozen networks (a teacher); their definitions
  (:class:`cmjax.objectives.FrozenNetwork`) are static fields;
- ``method_state``: what the method keeps beside them (e.g. a target network).

Static fields: each network's module and optimizer (``tx``) and its EMA rates.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cmjax.config.hparams import OptimHParams, TrainHParams
from cmjax.core.run_once import call_once
from cmjax.errors import ConfigError
from cmjax.objectives import GENERATOR, Frozen, FrozenNetwork, Nets


def make_optimizer(hp: OptimHParams) -> optax.GradientTransformation:
    """RAdam/Adam with optional linear warmup and global-norm clipping (both off for iCT)."""
    lr: float | optax.Schedule = hp.learning_rate
    if hp.warmup_steps > 0:
        lr = optax.linear_schedule(0.0, hp.learning_rate, hp.warmup_steps)
    opt = {"radam": optax.radam, "adam": optax.adam}[hp.name]
    tx = opt(lr, b1=hp.b1, b2=hp.b2, eps=hp.eps)
    if hp.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(hp.grad_clip_norm), tx)
    return tx


@dataclasses.dataclass(frozen=True)
class NetState:
    """One trained network beside the generator: parameters, optimizer state, EMA trees
    (children); module, optimizer and EMA rates (static)."""

    params: Any
    opt_state: optax.OptState
    ema_params: tuple[Any, ...]
    model: Any
    tx: optax.GradientTransformation
    ema_rates: tuple[float, ...] = ()

    @property
    def apply_fn(self):
        return self.model.apply

    def replace(self, **changes: Any) -> NetState:
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    NetState,
    data_fields=["params", "opt_state", "ema_params"],
    meta_fields=["model", "tx", "ema_rates"],
)


@dataclasses.dataclass(frozen=True)
class TrainState:
    """The whole training state; see the module docstring for its layout.

    ``ema_params[j]`` is the EMA of the generator's ``params`` at rate ``ema_rates[j]``;
    ``apply_fn`` is the generator's ``model.apply``.
    """

    step: jax.Array
    params: Any
    ema_params: tuple[Any, ...]
    opt_state: optax.OptState
    model: Any
    tx: optax.GradientTransformation
    ema_rates: tuple[float, ...] = ()
    networks: Mapping[str, NetState] | None = None
    frozen: Mapping[str, Any] | None = None
    frozen_nets: tuple[tuple[str, FrozenNetwork], ...] = ()
    method_state: Any = None

    @property
    def apply_fn(self):
        return self.model.apply

    def replace(self, **changes: Any) -> TrainState:
        return dataclasses.replace(self, **changes)

    def ema(self, rate: float) -> Any:
        """The generator's EMA parameters at ``rate`` (one of ``ema_rates``)."""
        if rate not in self.ema_rates:
            raise KeyError(f"no EMA at rate {rate}; this state keeps {self.ema_rates}")
        return self.ema_params[self.ema_rates.index(rate)]

    # -- every network by name (the generator is GENERATOR) --------------------------------
    def network(self, name: str) -> NetState:
        """Trained network ``name`` as a NetState (the generator's fields for GENERATOR)."""
        if name == GENERATOR:
            return NetState(
                self.params, self.opt_state, self.ema_params, self.model, self.tx, self.ema_rates
            )
        if not self.networks or name not in self.networks:
            raise KeyError(f"no trained network {name!r}; this state has {self.network_names}")
        return self.networks[name]

    def with_network(self, name: str, net: NetState) -> TrainState:
        """This state with trained network ``name``'s params, optimizer and EMA replaced."""
        if name == GENERATOR:
            return self.replace(
                params=net.params, opt_state=net.opt_state, ema_params=net.ema_params
            )
        return self.replace(networks={**self.networks, name: net})

    @property
    def network_names(self) -> tuple[str, ...]:
        return (GENERATOR, *sorted(self.networks or {}))

    def nets(self) -> Nets:
        """What a player's loss reads (``cmjax.objectives.Nets``)."""
        names = self.network_names
        frozen_nets = dict(self.frozen_nets)
        return Nets(
            params={n: self.network(n).params for n in names},
            apply={n: self.network(n).apply_fn for n in names},
            frozen={n: Frozen(frozen_nets[n], p) for n, p in (self.frozen or {}).items()},
            method_state=self.method_state,
        )


_OPTIONAL = ("networks", "frozen", "method_state")


def _flatten_with_keys(state: TrainState):
    names = ["step", "params", "ema_params", "opt_state"]
    names += [n for n in _OPTIONAL if getattr(state, n) is not None]
    children = [(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in names]
    present = tuple(n for n in _OPTIONAL if getattr(state, n) is not None)
    return children, (state.model, state.tx, state.ema_rates, state.frozen_nets, present)


def _flatten(state: TrainState):
    children, aux = _flatten_with_keys(state)
    return [c for _, c in children], aux


def _unflatten(aux, children) -> TrainState:
    model, tx, ema_rates, frozen_nets, present = aux
    step, params, ema_params, opt_state = children[:4]
    optional = dict(zip(present, children[4:], strict=True))
    return TrainState(
        step,
        params,
        ema_params,
        opt_state,
        model,
        tx,
        ema_rates,
        frozen_nets=frozen_nets,
        **optional,
    )


jax.tree_util.register_pytree_with_keys(TrainState, _flatten_with_keys, _unflatten, _flatten)


def init_network_params(
    model: Any, data_shape: tuple[int, ...], num_classes: int, rng: jax.Array
) -> Any:
    """Network parameters from a batch of one dummy example of ``data_shape``."""
    x = jnp.zeros((1, *data_shape), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32) if num_classes else None
    return model.init({"params": rng}, x, jnp.zeros((1,), jnp.float32), labels, False)["params"]


def init_params(model: Any, hp: TrainHParams, rng: jax.Array) -> Any:
    """The generator network's fresh parameters."""
    return init_network_params(model, hp.data_shape, hp.num_classes, rng)


@functools.lru_cache(maxsize=256)
def optimizer(hp: OptimHParams) -> optax.GradientTransformation:
    """One optimizer object per optimizer config, so states built from equal hyperparameters
    (fresh, abstract, restored) have equal static fields and share one jit cache entry."""
    return make_optimizer(hp)


def _optimizers(hp: TrainHParams) -> dict[str, optax.GradientTransformation]:
    return {GENERATOR: optimizer(hp.optim), **{n.name: optimizer(n.optim) for n in hp.networks}}


def as_hparams(config_or_hparams: Mapping[str, Any] | TrainHParams) -> TrainHParams:
    """``TrainHParams`` as given, or resolved from a config (notebooks pass either)."""
    if isinstance(config_or_hparams, TrainHParams):
        return config_or_hparams
    return TrainHParams.from_config(config_or_hparams)


def init_trained_state(hp: TrainHParams, rng: jax.Array) -> TrainState:
    """The state of every trained network at step 0 (no frozen networks); pure in ``rng``."""
    txs = _optimizers(hp)
    objective = hp.objective

    @jax.jit  # one compiled init instead of thousands of eager ops; nests in eval_shape/jit
    def init(rng):
        # The objective may wrap the network's parameters (e.g. sCT's adaptive weight).
        params = objective.init_params(init_params(hp.model, hp, rng), jax.random.fold_in(rng, 1))
        ema = tuple(jax.tree.map(jnp.copy, params) for _ in hp.ema_rates)  # own buffers
        nets = {}
        for i, spec in enumerate(hp.networks):
            p = init_network_params(
                spec.model, hp.data_shape, hp.num_classes, jax.random.fold_in(rng, 2 + i)
            )
            nets[spec.name] = (
                p,
                txs[spec.name].init(p),
                tuple(jax.tree.map(jnp.copy, p) for _ in spec.ema_rates),
            )
        all_params = {GENERATOR: params, **{n: v[0] for n, v in nets.items()}}
        method_state = objective.init_method_state(all_params, jax.random.fold_in(rng, 2**31 - 1))
        return params, ema, txs[GENERATOR].init(params), nets, method_state

    params, ema, opt_state, nets, method_state = call_once(init, rng)
    networks = None
    if hp.networks:
        networks = {
            spec.name: NetState(*nets[spec.name], spec.model, txs[spec.name], spec.ema_rates)
            for spec in hp.networks
        }
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=ema,
        opt_state=opt_state,
        model=hp.model,
        tx=txs[GENERATOR],
        ema_rates=hp.ema_rates,
        networks=networks,
        method_state=method_state,
    )


def check_frozen_networks(hp: TrainHParams, frozen: Mapping[str, Any] | None) -> None:
    """ConfigError unless ``frozen`` has exactly the networks the objective reads."""
    specs = hp.objective.frozen_networks()
    given = set(frozen or {})
    if set(specs) != given:
        names = ", ".join(f"{n!r} ({s.key})" for n, s in specs.items())
        raise ConfigError(
            f"objective {hp.objective.name!r} reads the frozen network(s) {names or 'none'}, "
            f"got {sorted(given) or 'none'}: load them once with "
            "cmjax.load_frozen(hp) and pass frozen= (the training loop does this itself)"
        )


def attach_frozen(state: TrainState, frozen: Mapping[str, Frozen] | None) -> TrainState:
    """``state`` holding the frozen networks ``{name: Frozen(definition, params)}`` (params
    as they are: arrays, or ShapeDtypeStructs for an abstract state)."""
    if not frozen:
        return state
    return state.replace(
        frozen={n: f.params for n, f in sorted(frozen.items())},
        frozen_nets=tuple((n, f.network) for n, f in sorted(frozen.items())),
    )


def with_generator_network(state: TrainState, objective: Any, net_params: Any) -> TrainState:
    """``state`` at step 0 with the generator's network parameters replaced by
    ``net_params`` (cast and placed like the ones they replace), its EMA trees equal to them
    and a fresh optimizer state (the start of ``init_from`` and of a student that starts as
    its teacher)."""
    params = objective.replace_net_params(state.params, net_params)
    params = jax.tree.map(  # own buffers: the source (a frozen teacher) stays in the state
        lambda p, old: jax.device_put(jnp.array(p, old.dtype, copy=True), old.sharding),
        params,
        state.params,
    )
    opt_shardings = jax.tree.map(lambda a: a.sharding, state.opt_state)
    opt_state = jax.jit(state.tx.init, out_shardings=opt_shardings)(params)
    ema = tuple(jax.tree.map(jnp.copy, params) for _ in state.ema_params)
    # The method state starts again from the new parameters (CD's target network must start
    # as the student does, not as the random initialization it replaced).
    others = {n: s.params for n, s in (state.networks or {}).items()}
    method_state = objective.init_method_state({GENERATOR: params, **others}, jax.random.key(0))
    old = state.method_state
    if old is not None and jax.tree.structure(old) == jax.tree.structure(method_state):
        method_state = jax.tree.map(
            lambda a, o: jax.device_put(jnp.asarray(a, o.dtype), o.sharding), method_state, old
        )
    return state.replace(
        step=jnp.zeros_like(state.step),
        params=params,
        ema_params=ema,
        opt_state=opt_state,
        method_state=method_state,
    )


def same_layout(a: Any, b: Any) -> bool:
    """Whether two parameter trees have the same structure and leaf shapes."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(x.shape == y.shape for x, y in pairs)


def start_from_frozen(hp: TrainHParams, state: TrainState) -> TrainState:
    """A fresh state whose generator starts as the frozen network the objective names
    (``init_from_frozen``: a teacher), when that network has the generator's layout."""
    name = hp.objective.init_from_frozen()
    if not name or not state.frozen or name not in state.frozen or hp.init_from:
        return state  # (config.init_from, applied after this, wins)
    source = state.frozen[name]
    if not same_layout(source, hp.objective.net_params(state.params)):
        logging.getLogger(__name__).warning(
            "the frozen %r network has another layout than config.model: the generator "
            "starts from a random initialization (set the objective's init_from_teacher=False "
            "to say so)",
            name,
        )
        return state
    logging.getLogger(__name__).info("the generator starts as the frozen %r network", name)
    return with_generator_network(state, hp.objective, source)


def create_train_state(
    config_or_hparams: Mapping[str, Any] | TrainHParams,
    rng: jax.Array,
    *,
    frozen: Mapping[str, Frozen] | None = None,
) -> TrainState:
    """A fresh TrainState at step 0; EMA trees start equal to the parameters.

    ``frozen``: the frozen networks the objective reads, ``{name: Frozen(definition,
    params)}`` as ``cmjax.load_frozen(hp)`` returns them (sCD's teacher); none for most. A
    generator that starts as its teacher (CD: ``init_from_frozen``) does so here.
    Pure in ``rng``: ``jax.eval_shape(lambda r: create_train_state(hp, r), rng)`` gives the
    abstract state of an objective without frozen networks.
    """
    hp = as_hparams(config_or_hparams)
    check_frozen_networks(hp, frozen)
    if frozen:  # like the trained parameters: on the default device, uncommitted
        frozen = {
            n: Frozen(f.network, jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), f.params))
            for n, f in frozen.items()
        }
    return start_from_frozen(hp, attach_frozen(init_trained_state(hp, rng), frozen))
