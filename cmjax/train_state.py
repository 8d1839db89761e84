"""TrainState and its construction: parameters, EMA trees, optimizer state."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cmjax.hparams import OptimHParams, TrainHParams
from cmjax.models import build_model
from cmjax.run_once import call_once


@dataclasses.dataclass(frozen=True)
class TrainState:
    """The whole training state; a pytree with the callables and EMA rates as static fields.

    ``ema_params[j]`` is the EMA of ``params`` at rate ``ema_rates[j]``. ``frozen``: parameters
    the objective reads but never trains (sCD's teacher), sharded and checkpointed like
    ``params``. When it is None (every objective without frozen parameters) it is not a
    child of the pytree at all, so such states flatten, shard and checkpoint exactly as
    before the field existed (checkpoints written without it restore unchanged).
    """

    step: jax.Array
    params: Any
    ema_params: tuple[Any, ...]
    opt_state: optax.OptState
    apply_fn: Callable[..., jax.Array]
    tx: optax.GradientTransformation
    ema_rates: tuple[float, ...] = ()
    frozen: Any = None

    def replace(self, **changes: Any) -> TrainState:
        return dataclasses.replace(self, **changes)

    def ema(self, rate: float) -> Any:
        """The EMA parameters at ``rate`` (one of ``ema_rates``)."""
        if rate not in self.ema_rates:
            raise KeyError(f"no EMA at rate {rate}; this state keeps {self.ema_rates}")
        return self.ema_params[self.ema_rates.index(rate)]


_CHILDREN = ("step", "params", "ema_params", "opt_state")


def _flatten_with_keys(state: TrainState):
    names = _CHILDREN + (() if state.frozen is None else ("frozen",))
    children = [(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in names]
    return children, (state.apply_fn, state.tx, state.ema_rates, state.frozen is not None)


def _flatten(state: TrainState):
    children, aux = _flatten_with_keys(state)
    return [c for _, c in children], aux


def _unflatten(aux, children) -> TrainState:
    apply_fn, tx, ema_rates, has_frozen = aux
    step, params, ema_params, opt_state = children[:4]
    frozen = children[4] if has_frozen else None
    return TrainState(step, params, ema_params, opt_state, apply_fn, tx, ema_rates, frozen)


jax.tree_util.register_pytree_with_keys(TrainState, _flatten_with_keys, _unflatten, _flatten)


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


def init_params(model: nn.Module, hp: TrainHParams, rng: jax.Array) -> Any:
    """Network parameters from a batch of one dummy example of ``hp.data_shape``."""
    x = jnp.zeros((1, *hp.data_shape), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32) if hp.num_classes else None
    return model.init({"params": rng}, x, jnp.zeros((1,), jnp.float32), labels, False)["params"]


def _hashable(value: Any) -> Any:
    """A config section as nested tuples (a cache key)."""
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return tuple(sorted((k, _hashable(v)) for k, v in dict(value).items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


@functools.lru_cache(maxsize=64)
def _cached_model(model_items: tuple) -> nn.Module:
    """One network object per model config, so states built from the same config (fresh,
    abstract, restored) have equal static fields and share a jit cache entry."""
    return build_model(dict(model_items))


@functools.lru_cache(maxsize=64)
def _cached_optimizer(hp: OptimHParams) -> optax.GradientTransformation:
    return make_optimizer(hp)


def create_train_state(
    config: Mapping[str, Any],
    rng: jax.Array,
    model: nn.Module | None = None,
    *,
    load_frozen: bool = True,
) -> TrainState:
    """A fresh TrainState at step 0; EMA trees start equal to the parameters.

    With ``load_frozen=False`` it is pure in ``rng``:
    ``jax.eval_shape(lambda r: create_train_state(config, r, load_frozen=False), rng)`` gives
    the abstract state without allocating it. Otherwise an objective's frozen parameters
    (sCD's teacher) are read from disk into ``frozen`` (``cmjax.teacher.attach_frozen``).
    """
    hp = TrainHParams.from_config(config)
    model = _cached_model(_hashable(config["model"])) if model is None else model
    tx = _cached_optimizer(hp.optim)

    @jax.jit  # one compiled init instead of thousands of eager ops; nests in eval_shape/jit
    def init(rng):
        # The objective may wrap the network's parameters (e.g. sCT's adaptive weight).
        params = hp.objective.init_params(init_params(model, hp, rng), jax.random.fold_in(rng, 1))
        ema = tuple(jax.tree.map(jnp.copy, params) for _ in hp.ema_rates)  # own buffers
        frozen = hp.objective.init_frozen(hp.objective.net_params(params))
        return params, ema, tx.init(params), frozen

    params, ema_params, opt_state, frozen = call_once(init, rng)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=ema_params,
        opt_state=opt_state,
        apply_fn=model.apply,
        tx=tx,
        ema_rates=hp.ema_rates,
        frozen=frozen,
    )
    if load_frozen and frozen is not None:
        from cmjax.teacher import attach_frozen  # local import: teacher imports parallel

        state = attach_frozen(state, hp.objective)
    return state
