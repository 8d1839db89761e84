"""The iCT train step: a pure function of (state, batch, rng), jittable and mesh-agnostic."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cmjax import ict, losses
from cmjax.consistency import student_teacher_outputs
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
    schedule = hp.schedule
    distance = losses.get_distance(hp.loss)

    def train_step(
        state: TrainState, batch: Batch, rng: jax.Array | None = None
    ) -> tuple[TrainState, Metrics]:
        check_batch(batch, hp)
        if rng is None:
            rng = jax.random.key(hp.seed)
        x = batch["x"].astype(jnp.float32)
        labels = batch.get("label")
        batch_size = x.shape[0]
        k_sigma, k_noise, k_dropout = jax.random.split(jax.random.fold_in(rng, state.step), 3)
        sigma, sigma_next = ict.sample_sigma_pairs(k_sigma, state.step, batch_size, schedule)
        z = jax.random.normal(k_noise, x.shape, jnp.float32)
        if hp.weighting == "ict":
            weight = ict.ict_loss_weight(sigma, sigma_next)
        else:
            weight = jnp.ones_like(sigma)

        def loss_fn(params):
            student, teacher = student_teacher_outputs(
                state.apply_fn,
                params,
                x,
                z,
                sigma,
                sigma_next,
                labels,
                k_dropout,
                schedule=schedule,
                noise_cond_scale=hp.noise_cond_scale,
            )
            dist = distance(student, teacher, hp.loss_c)
            return jnp.mean(weight * dist), dist

        (loss, dist), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = tuple(
            ema_update(e, params, r) for e, r in zip(state.ema_params, hp.ema_rates, strict=True)
        )
        metrics = {
            "loss": loss,
            "distance": jnp.mean(dist),
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "num_scales": ict.num_scales(
                state.step, schedule.total_steps, schedule.s0, schedule.s1
            ),
            "sigma_mean": jnp.mean(sigma_next),
            "examples": jnp.asarray(batch_size, jnp.int32),
        }
        new_state = state.replace(
            step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state
        )
        return new_state, metrics

    return train_step
