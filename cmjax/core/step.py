"""The one train step of every objective and method: a pure function of (state, batch, rng).

The objective supplies the losses (``player_loss``) and the update schedule (``players()``);
the step owns everything shared: the rng derivation, gradients, every network's optimizer,
the EMA trees, the method state and the common metrics. Players are updated in order inside
one jitted function; a player that is not due at a step (``Player.every`` > 1) goes through
a ``lax.cond`` branch that returns its parameters, optimizer state and EMA trees untouched,
so nothing recompiles and an idle player stays bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cmjax.config.hparams import TrainHParams
from cmjax.core.state import TrainState, as_hparams
from cmjax.objectives import GENERATOR, Player

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def check_batch(batch: Batch, hp: TrainHParams) -> None:
    """Raise a clear error when a batch does not match the configured data (trace time)."""
    if "x" not in batch:
        raise ValueError(f"batch needs key 'x' (data in [-1, 1]); got keys {sorted(batch)}")
    if tuple(batch["x"].shape[1:]) != hp.data_shape:
        raise ValueError(
            f"batch['x'] has example shape {tuple(batch['x'].shape[1:])}, "
            f"config.data.shape is {hp.data_shape}"
        )
    if hp.num_classes and "label" not in batch:
        raise ValueError("config.data.num_classes > 0 but the batch has no 'label'")
    allowed = {"x", "label", *hp.objective.BATCH_KEYS}
    extra = sorted(set(batch) - allowed)
    if extra:
        raise ValueError(f"unexpected batch key(s) {extra}; a batch holds {sorted(allowed)}")


def ema_update(ema: Any, params: Any, rate: float) -> Any:
    """ema <- rate * ema + (1 - rate) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)


def _metric_name(player: Player, key: str) -> str:
    """The generator's metrics keep their plain names; other players' get a prefix."""
    return key if player.name == GENERATOR else f"{player.name}/{key}"


def _update(
    hp: TrainHParams, player: Player, batch: Batch, key: jax.Array, state: TrainState
) -> tuple[TrainState, Metrics]:
    """One optimizer step of ``player``'s network (its EMA trees and the method state too)."""
    objective = hp.objective
    net = state.network(player.name)
    nets = state.nets()

    def loss_fn(params):
        loss_B, aux = objective.player_loss(player.name, params, nets, batch, key, state.step)
        return jnp.mean(loss_B.astype(jnp.float32)), aux

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(net.params)
    updates, opt_state = net.tx.update(grads, net.opt_state, net.params)
    params = optax.apply_updates(net.params, updates)
    ema = tuple(
        ema_update(e, params, r) for e, r in zip(net.ema_params, net.ema_rates, strict=True)
    )
    state = state.with_network(
        player.name, net.replace(params=params, opt_state=opt_state, ema_params=ema)
    )
    method_state = objective.update_method_state(
        state.method_state, player.name, state.nets().params, state.step, aux
    )
    state = state.replace(method_state=method_state)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        **aux,
    }
    return state, metrics


def _scheduled(
    hp: TrainHParams, player: Player, batch: Batch, key: jax.Array, state: TrainState
) -> tuple[TrainState, Metrics]:
    """``_update`` on the player's steps; elsewhere the state unchanged and zero metrics
    (``<player>/active`` tells them apart)."""

    def run(s):
        return _update(hp, player, batch, key, s)

    if player.every == 1:
        return run(state)
    _, shapes = jax.eval_shape(run, state)

    def skip(s):
        return s, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)

    active = player.active(state.step)
    state, metrics = jax.lax.cond(active, run, skip, state)
    return state, {**metrics, "active": active.astype(jnp.float32)}


def make_train_step(
    config_or_hparams: Mapping[str, Any] | TrainHParams,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """Build ``train_step(state, batch, rng=None) -> (state, metrics)``.

    ``batch``: {"x": (B, ...) float in [-1, 1], "label": (B,) int, only if conditional}.
    ``rng``: the run's base key (default ``jax.random.key(config.seed)``); the step's own key
    is ``fold_in(rng, state.step)`` (the first player's; player i > 0 gets
    ``fold_in(that, i)``), so a resumed run draws exactly what it would have drawn.
    The function closes over frozen hyperparameters only; jit it with any shardings.
    """
    hp = as_hparams(config_or_hparams)
    players = hp.objective.players()

    def train_step(
        state: TrainState, batch: Batch, rng: jax.Array | None = None
    ) -> tuple[TrainState, Metrics]:
        check_batch(batch, hp)
        if rng is None:
            rng = jax.random.key(hp.seed)
        key = jax.random.fold_in(rng, state.step)
        batch = {**batch, "x": batch["x"].astype(jnp.float32)}
        metrics: Metrics = {"examples": jnp.asarray(batch["x"].shape[0], jnp.int32)}
        for i, player in enumerate(players):
            state, m = _scheduled(
                hp, player, batch, key if i == 0 else jax.random.fold_in(key, i), state
            )
            metrics.update({_metric_name(player, k): v for k, v in m.items()})
        return state.replace(step=state.step + 1), metrics

    return train_step
