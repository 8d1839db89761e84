"""The one train step of every objective: a pure function of (state, batch, rng).

The objective (``hp.objective``) supplies the per-example loss; the step owns everything
shared: the rng derivation, gradients, the optimizer, the EMA trees and the common metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cmjax.hparams import TrainHParams
from cmjax.train_state import TrainState

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
    extra = sorted(set(batch) - {"x", "label"})
    if extra:
        raise ValueError(f"unexpected batch key(s) {extra}; a batch holds 'x' and 'label'")


def ema_update(ema: Any, params: Any, rate: float) -> Any:
    """ema <- rate * ema + (1 - rate) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)


def make_train_step(
    config_or_hparams: Mapping[str, Any] | TrainHParams,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """Build ``train_step(state, batch, rng=None) -> (state, metrics)``.

    ``batch``: {"x": (B, ...) float in [-1, 1], "label": (B,) int, only if conditional}.
    ``rng``: the run's base key (default ``jax.random.key(config.seed)``); the step's own key
    is ``fold_in(rng, state.step)``, so a resumed run draws exactly what it would have drawn.
    The function closes over frozen hyperparameters only; jit it with any shardings.
    """
    hp = (
        config_or_hparams
        if isinstance(config_or_hparams, TrainHParams)
        else TrainHParams.from_config(config_or_hparams)
    )
    objective = hp.objective

    def train_step(
        state: TrainState, batch: Batch, rng: jax.Array | None = None
    ) -> tuple[TrainState, Metrics]:
        check_batch(batch, hp)
        if rng is None:
            rng = jax.random.key(hp.seed)
        x = batch["x"].astype(jnp.float32)
        labels = batch.get("label")
        key = jax.random.fold_in(rng, state.step)
        # Frozen parameters (sCD's teacher) are an input of the step, never a jit constant,
        # and outside value_and_grad, so never trained; objectives without them never see it.
        extra = {} if state.frozen is None else {"frozen": state.frozen}

        def loss_fn(params):
            loss_B, aux = objective.loss(
                params, state.apply_fn, x, labels, key, state.step, **extra
            )
            return jnp.mean(loss_B.astype(jnp.float32)), aux

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = tuple(
            ema_update(e, params, r) for e, r in zip(state.ema_params, hp.ema_rates, strict=True)
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "examples": jnp.asarray(x.shape[0], jnp.int32),
            **aux,
        }
        new_state = state.replace(
            step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state
        )
        return new_state, metrics

    return train_step
