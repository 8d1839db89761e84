"""The LCSC search: score coefficient vectors of a ``StackedRun`` with a sample-quality metric
(``cmjax.evaluation.metrics``) and search them with CMA-ES (evosax), starting from the best
single candidate, so the result never scores worse than it on the search seed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cmjax.config.hparams import TrainHParams
from cmjax.core import parallel
from cmjax.core.sampling import sample
from cmjax.errors import CombineError
from cmjax.evaluation.metrics import Metric
from cmjax.lcsc.stack import StackedRun, alpha_from_free, combine, combine_trees, free_from_alpha
from cmjax.objectives import SamplerPlan


def sampler_plan(hp: TrainHParams, steps: int | None = None) -> SamplerPlan:
    """The run's objective's ``steps``-step plan (default: its first default sampler)."""
    if steps is None:
        return next(iter(hp.objective.sampler_plans().values()))
    try:
        return hp.objective.plan(steps)
    except ValueError as e:
        raise CombineError(str(e)) from None


# -- scoring ---------------------------------------------------------------------------------
class Scorer:
    """Scores coefficient vectors alpha (P, K) of a ``StackedRun`` with one metric.

    Every alpha draws ``num_samples`` samples with the same key (``seed``), so a score is a
    deterministic function of alpha. Device metrics: chunks of ``per_device`` x devices
    members, the chunk axis sharded over all devices, vmapped within a device.
    """

    def __init__(
        self,
        run: StackedRun,
        metric: Metric,
        plan: SamplerPlan,
        num_samples: int,
        per_device: int = 1,
    ):
        self.run, self.metric, self.plan, self.num = run, metric, plan, num_samples
        hp = run.hp
        # class-conditional runs: balanced, fixed labels 0, 1, ..., C-1, 0, 1, ...
        labels = jnp.arange(num_samples) % hp.num_classes if hp.num_classes else None
        self.objective, self.data_shape = hp.objective, hp.data_shape
        self.apply_fn = run.anchor.apply_fn
        self.devices = len(jax.devices())
        self.chunk = self.devices * max(1, int(per_device))
        self._refs: dict[str, Any] = {}
        shape = (num_samples, *self.data_shape)
        objective, apply_fn = self.objective, self.apply_fn

        def one(stacked, alpha, key, ref):
            params = combine_trees(stacked, alpha)
            x = sample(objective, apply_fn, params, key, shape, plan, labels)
            return metric.device_fn(x, ref)

        pop = NamedSharding(run.mesh, P(parallel.BATCH_AXES))
        self._score_chunk = jax.jit(jax.vmap(one, in_axes=(None, 0, None, None)), out_shardings=pop)
        self._pop_sharding = pop
        self._draw = jax.jit(
            lambda params, key: sample(objective, apply_fn, params, key, shape, plan, labels),
            out_shardings=parallel.batch_sharding(run.mesh, len(shape))
            if num_samples % self.devices == 0
            else None,
        )

    def reference(self, which: str):
        if which not in self._refs:
            self._refs[which] = self.metric.reference(which)
        return self._refs[which]

    def __call__(self, alphas_PxK: np.ndarray, seed: int, which: str = "search") -> np.ndarray:
        """(P,) float64 scores of the rows of ``alphas_PxK``."""
        alphas = np.asarray(alphas_PxK, np.float32).reshape(-1, self.run.num)
        key, ref = jax.random.key(seed), self.reference(which)
        if self.metric.device_fn is None:
            out = []
            for a in alphas:
                x = self._draw(combine(self.run.stacked, jnp.asarray(a)), key)
                out.append(float(self.metric.host_fn(np.asarray(jax.device_get(x)), ref)))
            return np.asarray(out, np.float64)
        scores = []
        for i in range(0, len(alphas), self.chunk):
            part = alphas[i : i + self.chunk]
            pad = (-len(part)) % self.devices
            padded = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
            padded = jax.device_put(padded, self._pop_sharding)
            s = self._score_chunk(self.run.stacked, padded, key, ref)
            scores.append(np.asarray(jax.device_get(s), np.float64)[: len(part)])
        return np.concatenate(scores)


# -- the search ------------------------------------------------------------------------------
@dataclasses.dataclass
class SearchResult:
    alpha: np.ndarray  # (K,) float32, sums to 1
    score: float  # the search metric of ``alpha`` (search seed)
    single_scores: np.ndarray  # (K,) each candidate alone (search seed)
    history: list[float]  # best score after each generation


def search(
    scorer: Scorer,
    *,
    generations: int = 20,
    population: int = 16,
    sigma_init: float = 0.1,
    seed: int = 0,
    progress: Callable[[str], None] | None = print,
) -> SearchResult:
    """CMA-ES (evosax) over the K-1 free coordinates, started at the best single candidate.

    Returns the best alpha seen, including the single candidates themselves, so the result
    never scores worse than the best single checkpoint on the search metric.
    """
    from evosax.algorithms import CMA_ES

    k = scorer.run.num
    singles = scorer(np.eye(k, dtype=np.float32), seed)
    best_k = int(np.argmin(singles))
    best_alpha = np.eye(k, dtype=np.float32)[best_k]
    best = float(singles[best_k])
    history: list[float] = []
    if k == 1 or generations <= 0:
        return SearchResult(best_alpha, best, singles, history)
    es = CMA_ES(population_size=population, solution=jnp.zeros(k - 1, jnp.float32))
    params = es.default_params.replace(std_init=jnp.float32(sigma_init))
    rng = jax.random.key(seed)
    rng, k_init = jax.random.split(rng)
    state = es.init(k_init, free_from_alpha(jnp.asarray(best_alpha)), params)
    t0 = time.perf_counter()
    for g in range(generations):
        rng, k_ask, k_tell = jax.random.split(rng, 3)
        w, state = es.ask(k_ask, state, params)
        alphas = np.asarray(alpha_from_free(w))
        fitness = scorer(alphas, seed)
        fitness = np.where(np.isfinite(fitness), fitness, np.inf)
        i = int(np.argmin(fitness))
        if fitness[i] < best:
            best, best_alpha = float(fitness[i]), alphas[i].astype(np.float32)
        state, _ = es.tell(k_tell, w, jnp.asarray(np.minimum(fitness, 1e30)), state, params)
        history.append(best)
        if progress is not None:
            elapsed = time.perf_counter() - t0
            eta = elapsed / (g + 1) * (generations - g - 1)
            progress(
                f"LCSC generation {g + 1}/{generations}  best {scorer.metric.name} {best:.5f}  "
                f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"
            )
    return SearchResult(best_alpha, best, singles, history)
