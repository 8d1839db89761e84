"""In-loop evaluation: FID (when Inception weights and reference statistics are configured),
for the embedded 8x8 digits the FID proxy of ``digits_proxy`` (not FID), or, for vector data,
the sliced Wasserstein distance, for 1- and 2-step samples.

``config.eval``: every_steps (0 = off), num_samples, batch_size, inception_path, ref_stats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from cmjax import images, parallel
from cmjax.data import make_dataset
from cmjax.errors import ConfigError
from cmjax.evaluation import digits_proxy
from cmjax.evaluation.sliced_wasserstein import sliced_wasserstein
from cmjax.hparams import TrainHParams
from cmjax.objectives import SamplerPlan
from cmjax.sampling import SamplerCache, make_sampler
from cmjax.train_state import TrainState


def generate(
    config,
    state: TrainState,
    plan: SamplerPlan,
    num: int,
    batch: int,
    seed: int = 0,
    params=None,
    samplers: SamplerCache | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``num`` samples (float, on every process) and their labels, drawn on all devices with
    the objective's sampler ``plan`` from ``params`` (default: the first EMA tree). With
    ``samplers`` (a run's cache) the jitted sampler is reused across calls."""
    hp = TrainHParams.from_config(config)
    mesh = parallel.make_mesh(config.get("mesh"))
    n_dev = jax.device_count()
    batch = max(n_dev, batch - batch % n_dev)
    params = state.ema_params[0] if params is None else params
    shape = (batch, *hp.data_shape)
    if samplers is None:
        draw = make_sampler(hp.objective, state.apply_fn, shape, plan, mesh=mesh)
    else:
        draw = samplers.get(shape, plan, mesh=mesh)
    out, labels = [], []
    for i in range(math.ceil(num / batch)):
        y = None
        if hp.num_classes:
            y = jax.random.randint(jax.random.key(seed + 10**6 + i), (batch,), 0, hp.num_classes)
            labels.append(np.asarray(y))
        x = draw(params, jax.random.key(seed + i), y)
        out.append(np.asarray(multihost_utils.process_allgather(x, tiled=True)))
    x = np.concatenate(out)[:num]
    return x, (np.concatenate(labels)[:num] if labels else None)


def make_evaluator(
    config: Mapping[str, Any], samplers: SamplerCache | None = None
) -> Callable[[TrainState], dict[str, float]] | None:
    """A function state -> {metric: value}, or None when ``config.eval`` asks for nothing.
    ``samplers``: the run's cache, so that repeated evaluations compile their samplers once."""
    ev = dict(config.get("eval", {}))
    if not int(ev.get("every_steps", 0)):
        return None
    hp = TrainHParams.from_config(config)
    num = int(ev.get("num_samples", 1000))
    batch = int(ev.get("batch_size", 256))
    plans = hp.objective.sampler_plans()
    if len(hp.data_shape) == 1:
        held_out = _held_out(config, num)

        def evaluate_sw(state):
            return {
                f"sw_{name}": float(
                    sliced_wasserstein(
                        generate(config, state, plan, num, batch, samplers=samplers)[0],
                        held_out,
                        jax.random.key(7),
                    )
                )
                for name, plan in plans.items()
            }

        return evaluate_sw
    if digits_proxy.applies_to(config) and not ev.get("inception_path"):

        def evaluate_digits(state):
            out = {}
            for name, plan in plans.items():
                x = images.to_uint8(generate(config, state, plan, num, batch, samplers=samplers)[0])
                out[f"digits_fd_proxy_{name}"] = digits_proxy.digits_fd_proxy(x)
            return out | {"digits_fd_proxy_floor": digits_proxy.data_floor()}

        return evaluate_digits
    if not ev.get("inception_path") or not ev.get("ref_stats"):
        raise ConfigError(
            "config.eval.every_steps > 0 on image data other than the 8x8 digits needs "
            "config.eval.inception_path and config.eval.ref_stats (see README: FID); "
            "or set --config.eval.every_steps=0"
        )
    from cmjax.evaluation.fid import (
        dataset_statistics,
        frechet_distance,
        load_reference_stats,
        make_feature_fn,
    )
    from cmjax.evaluation.inception import load_inception_weights

    features = make_feature_fn(load_inception_weights(ev["inception_path"]))
    ref = load_reference_stats(ev["ref_stats"])

    def evaluate_fid(state):
        out = {}
        for name, plan in plans.items():
            x = images.to_uint8(generate(config, state, plan, num, batch, samplers=samplers)[0])
            if x.shape[-1] == 1:
                x = np.repeat(x, 3, axis=-1)
            chunks = (x[i : i + batch] for i in range(0, len(x), batch))
            out[f"fid_{name}"] = frechet_distance(*dataset_statistics(features, chunks), *ref)
        return out

    return evaluate_fid


def _held_out(config, num: int) -> np.ndarray:
    """``num`` data points the training run never draws (another seed)."""
    held = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    held["seed"] = int(held.get("seed", 0)) + 10**6
    held["training"] = dict(held["training"], batch_size=num)
    return make_dataset(held).batch(0)["x"]
