"""In-loop evaluation: the run's metric (``cmjax.evaluation.metrics``: FID when Inception
weights and reference statistics are configured, the digits FD proxy (not FID) on the
embedded 8x8 digits, or the sliced Wasserstein distance for vector data) of every default
sampler's samples, and ``generate``, the one way samples are drawn on all devices.

``hp.eval``: every_steps (0 = off), num_samples, batch_size, inception_path, ref_stats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from cmjax.config.hparams import TrainHParams
from cmjax.core import parallel
from cmjax.core.sampling import SamplerCache
from cmjax.core.state import TrainState
from cmjax.evaluation.metrics import METRICS, default_metric_name
from cmjax.objectives import SamplerPlan


def generate(
    hp: TrainHParams,
    state: TrainState,
    plan: SamplerPlan,
    num: int,
    batch: int,
    seed: int = 0,
    params: Any = None,
    samplers: SamplerCache | None = None,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``num`` samples (float, on every process) and their labels, drawn on all devices of
    ``mesh`` (default: the run's mesh settings) with the objective's sampler ``plan`` from
    ``params`` (default: the first EMA tree). With ``samplers`` (a run's cache) the jitted
    sampler is reused across calls."""
    mesh = parallel.make_mesh(hp.mesh) if mesh is None else mesh
    n_dev = mesh.size
    batch = max(n_dev, batch - batch % n_dev)
    params = state.ema_params[0] if params is None else params
    shape = (batch, *hp.data_shape)
    if samplers is None:
        samplers = SamplerCache(hp.objective, state.apply_fn)
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
    hp: TrainHParams, samplers: SamplerCache | None = None, mesh: Mesh | None = None
) -> Callable[[TrainState], dict[str, float]] | None:
    """A function state -> {metric: value}, or None when ``hp.eval`` asks for nothing.
    ``samplers``: the run's cache, so that repeated evaluations compile their samplers once.
    A misconfigured metric (FID without its files) is an error now, not at the first eval."""
    if not hp.eval.every_steps:
        return None
    num, batch = hp.eval.num_samples, hp.eval.batch_size
    metric = METRICS[default_metric_name(hp)](hp, num)
    plans = hp.objective.sampler_plans()
    reference = metric.reference("search")

    def evaluate(state: TrainState) -> dict[str, float]:
        out = {}
        for name, plan in plans.items():
            x = generate(hp, state, plan, num, batch, samplers=samplers, mesh=mesh)[0]
            out[f"{metric.short}_{name}"] = metric.score(x, reference)
        return out | metric.extras()

    return evaluate
