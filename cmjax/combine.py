"""LCSC: linear combination of saved checkpoints (Liu et al. 2024, arXiv 2404.02241).

theta = sum_k alpha_k theta_k over K saved parameter trees of one run (kept / milestone
checkpoints, optionally their EMA trees), with sum_k alpha_k = 1 and alpha_k of any sign. The
coefficients come from a gradient-free search (CMA-ES from evosax) that minimizes a sample
quality metric of the combined model: the sliced Wasserstein distance to held-out data for
vector data, FID when ``config.eval`` names Inception weights and reference statistics, the
digits proxy (not FID) on the embedded 8x8 digits, or any metric registered in ``METRICS``.

The sum-to-1 constraint is built into the parametrization: the search moves w in R^(K-1) and
alpha = (w_1, ..., w_{K-1}, 1 - sum w). w = 0 is the last candidate alone.

Memory: the K trees are restored one checkpoint at a time and written into one preallocated
stacked device array per leaf (leading K axis), so the host never holds K trees; the
combination is a jitted tensordot over that axis. A population is scored in chunks whose
members are spread over the devices (vmapped, one member per device per call by default),
each drawing its samples from one fixed key, so the search is deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from cmjax import parallel
from cmjax.checkpoint import Checkpointer, CheckpointError
from cmjax.data import make_dataset
from cmjax.evaluation.sliced_wasserstein import sliced_wasserstein
from cmjax.hparams import TrainHParams
from cmjax.objectives import SamplerPlan
from cmjax.sampling import sample
from cmjax.train_state import TrainState


class CombineError(ValueError):
    """A combination cannot be set up; the message says what to change."""


# -- the coefficients ------------------------------------------------------------------------
def alpha_from_free(w: jax.Array) -> jax.Array:
    """(..., K-1) free coordinates -> (..., K) coefficients summing to 1 (last = 1 - sum)."""
    w = jnp.asarray(w, jnp.float32)
    return jnp.concatenate([w, 1.0 - jnp.sum(w, axis=-1, keepdims=True)], axis=-1)


def free_from_alpha(alpha: jax.Array) -> jax.Array:
    """Inverse of ``alpha_from_free`` for coefficients that sum to 1: the first K-1."""
    return jnp.asarray(alpha, jnp.float32)[..., :-1]


def combine_trees(stacked: Any, alpha_K: jax.Array) -> Any:
    """sum_k alpha_k tree_k for a tree of (K, ...) leaves: float32 tensordot over K (highest
    precision), cast back to each leaf's dtype. alpha = e_k returns tree_k bit for bit."""
    alpha = jnp.asarray(alpha_K, jnp.float32)

    def leaf(s):
        out = jnp.tensordot(alpha, s.astype(jnp.float32), axes=1, precision="highest")
        return out.astype(s.dtype)

    return jax.tree.map(leaf, stacked)


combine = jax.jit(combine_trees)


# -- loading ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Candidate:
    """One parameter tree of a run: ``tree`` is "params" or "ema_<rate>"."""

    step: int
    tree: str

    @property
    def name(self) -> str:
        return f"{self.tree}@{self.step}"


@dataclasses.dataclass
class StackedRun:
    """K candidates of one run, stacked on a leading axis of every parameter leaf."""

    workdir: Path
    config: ConfigDict
    candidates: list[Candidate]
    stacked: Any  # the params tree with (K, ...) leaves, on device
    anchor: TrainState  # the last restored state: the template of the written checkpoint
    mesh: Any

    @property
    def num(self) -> int:
        return len(self.candidates)

    def index(self, name: str) -> int:
        return [c.name for c in self.candidates].index(name)


def _stacked_sharding(leaf_sharding: NamedSharding) -> NamedSharding:
    return NamedSharding(leaf_sharding.mesh, P(None, *leaf_sharding.spec))


def _put(stacked: Any, tree: Any, k: jax.Array) -> Any:
    """``stacked`` with slot k (of the leading axis) set to ``tree``."""
    return jax.tree.map(
        lambda s, t: jax.lax.dynamic_update_index_in_dim(s, t.astype(s.dtype), k, 0), stacked, tree
    )


def load_stacked(
    workdir: str | Path,
    steps: Sequence[int] | None = None,
    include_ema: bool = False,
    include_params: bool = True,
) -> StackedRun:
    """Restore the candidates of ``workdir`` (its kept checkpoints, or ``steps``), one
    checkpoint at a time, into one preallocated stacked device tree. Order: by step, each
    step's raw parameters then its EMA trees; the last one is the search's starting anchor."""
    workdir = Path(workdir)
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        available = sorted(int(s) for s in checkpointer.manager.all_steps())
        if not available:
            raise CheckpointError(f"no checkpoint in {checkpointer.directory}; train first")
        steps = available if not steps else sorted(int(s) for s in steps)
        missing = sorted(set(steps) - set(available))
        if missing:
            raise CombineError(f"{workdir} has no checkpoint at step(s) {missing}: {available}")
        config = ConfigDict(checkpointer.restored_config(steps[-1]))
        hp = TrainHParams.from_config(config)
        trees = (["params"] if include_params else []) + (
            [f"ema_{r}" for r in hp.ema_rates] if include_ema else []
        )
        if not trees:
            raise CombineError("nothing to combine: include the raw parameters or the EMA trees")
        candidates = [Candidate(s, t) for s in steps for t in trees]
        mesh = parallel.make_mesh(config.get("mesh"))
        abstract = parallel.abstract_train_state(config, mesh)
        shardings = jax.tree.map(lambda a: _stacked_sharding(a.sharding), abstract.params)
        k_total = len(candidates)
        stacked = jax.jit(
            lambda: jax.tree.map(
                lambda a: jnp.zeros((k_total, *a.shape), a.dtype), abstract.params
            ),
            out_shardings=shardings,
        )()
        put = jax.jit(_put, donate_argnums=0, out_shardings=shardings)
        state, k = None, 0
        for step in steps:
            state = checkpointer.restore(abstract, step)
            for tree in trees:
                src = state.params if tree == "params" else state.ema(float(tree[4:]))
                stacked = put(stacked, src, jnp.int32(k))
                k += 1
    finally:
        checkpointer.close()
    return StackedRun(workdir, config, candidates, stacked, state, mesh)


# -- metrics ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Metric:
    """A sample-quality score (lower is better) of (N, ...) float samples in data units.

    ``device_fn(x, reference)`` is jittable and vmappable (scored on device, population
    members in parallel); ``host_fn(x_numpy, reference)`` runs on the host per candidate.
    ``reference(which)`` builds what the score compares with ("search" or "eval" split).
    """

    name: str
    reference: Callable[[str], Any]
    device_fn: Callable[[jax.Array, Any], jax.Array] | None = None
    host_fn: Callable[[np.ndarray, Any], float] | None = None


def _held_out_data(config, num: int, which: str) -> np.ndarray:
    """``num`` data points the run never trained on; another draw for each ``which``."""
    held = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    held["seed"] = int(held.get("seed", 0)) + (10**6 if which == "search" else 2 * 10**6)
    held["training"] = dict(held["training"], batch_size=num)
    return np.asarray(make_dataset(held).batch(0)["x"])


def sliced_wasserstein_metric(config, num: int) -> Metric:
    """Sliced W2 (512 projections) to ``num`` held-out points; a fixed projection key."""

    def reference(which):
        return jnp.asarray(_held_out_data(config, num, which).reshape(num, -1))

    def score(x, ref):
        return sliced_wasserstein(x.reshape(x.shape[0], -1), ref, jax.random.key(7))

    return Metric("sliced_wasserstein", reference, device_fn=score)


def fid_metric(config, num: int) -> Metric:
    """FID against ``config.eval.ref_stats`` with the Inception of ``config.eval``."""
    from cmjax import images
    from cmjax.evaluation.fid import (
        dataset_statistics,
        frechet_distance,
        load_reference_stats,
        make_feature_fn,
    )
    from cmjax.evaluation.inception import load_inception_weights

    ev = dict(config.get("eval", {}))
    if not ev.get("inception_path") or not ev.get("ref_stats"):
        raise CombineError(
            "FID needs config.eval.inception_path and config.eval.ref_stats (see README: FID); "
            "pass --inception and --ref_stats"
        )
    features = make_feature_fn(load_inception_weights(ev["inception_path"]))
    ref = load_reference_stats(ev["ref_stats"])
    batch = int(ev.get("batch_size", 256))

    def score(x, _):
        u8 = images.to_uint8(x)
        if u8.shape[-1] == 1:
            u8 = np.repeat(u8, 3, axis=-1)
        chunks = (u8[i : i + batch] for i in range(0, len(u8), batch))
        return frechet_distance(*dataset_statistics(features, chunks), *ref)

    del num
    return Metric("fid", lambda which: None, host_fn=score)


def digits_proxy_metric(config, num: int) -> Metric:
    """``digits_fd_proxy`` (cmjax/evaluation/digits_proxy.py): the Frechet distance in a small
    digits classifier's features to all 1,797 digits; NOT FID. Host-side, per candidate."""
    from cmjax import images
    from cmjax.evaluation import digits_proxy

    if not digits_proxy.applies_to(config):
        raise CombineError(
            "the digits proxy scores only the embedded 8x8x1 digits (data.name='digits'); "
            "for other images pass --metric=fid with --inception and --ref_stats"
        )
    del num

    def score(x, _):
        return digits_proxy.digits_fd_proxy(images.to_uint8(x))

    return Metric("digits_fd_proxy", lambda which: None, host_fn=score)


METRICS: dict[str, Callable[[Any, int], Metric]] = {
    "sliced_wasserstein": sliced_wasserstein_metric,
    "fid": fid_metric,
    "digits_proxy": digits_proxy_metric,
}


def sampler_plan(config, steps: int | None = None) -> SamplerPlan:
    """The run's objective's ``steps``-step plan (default: its first default sampler)."""
    objective = TrainHParams.from_config(config).objective
    if steps is None:
        return next(iter(objective.sampler_plans().values()))
    try:
        return objective.plan(steps)
    except ValueError as e:
        raise CombineError(str(e)) from None


def default_metric_name(config) -> str:
    """sliced_wasserstein for vector data, fid when config.eval configures it, else the
    digits proxy (which refuses data other than the embedded digits)."""
    shape = tuple(config["data"]["shape"])
    if len(shape) == 1:
        return "sliced_wasserstein"
    ev = dict(config.get("eval", {}))
    if ev.get("inception_path") and ev.get("ref_stats"):
        return "fid"
    return "digits_proxy"


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
        hp = TrainHParams.from_config(run.config)
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


# -- writing ---------------------------------------------------------------------------------
def write_combined(
    out_dir: str | Path, run: StackedRun, alpha: np.ndarray, info: dict[str, Any] | None = None
) -> Path:
    """A new work directory holding one checkpoint (the anchor's step) whose raw parameters
    and every EMA tree are the combination, with the run's config: ``cmjax-sample``,
    ``cmjax-fid`` (via its samples) and ``config.init_from`` read it as any run.
    Also writes ``lcsc.json`` (alpha, candidates, scores)."""
    out_dir = Path(out_dir)
    if (out_dir / "checkpoints").exists() and any((out_dir / "checkpoints").iterdir()):
        raise CombineError(f"{out_dir} already holds checkpoints; choose a new --out")
    alpha = np.asarray(alpha, np.float32)
    if alpha.shape != (run.num,) or not math.isclose(float(alpha.sum()), 1.0, abs_tol=1e-5):
        raise CombineError(f"alpha must be {run.num} numbers summing to 1, got {alpha}")
    shardings = jax.tree.map(lambda a: a.sharding, run.anchor.params)
    combined = jax.jit(combine_trees, out_shardings=shardings)(run.stacked, jnp.asarray(alpha))
    copies = tuple(jax.tree.map(jnp.copy, combined) for _ in run.anchor.ema_params)
    state = run.anchor.replace(params=combined, ema_params=copies)
    step = int(jax.device_get(run.anchor.step))
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(out_dir, async_save=False)
    try:
        checkpointer.save(step, state, run.config, force=True)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    if jax.process_index() == 0:
        (out_dir / "config.json").write_text(json.dumps(run.config.to_dict(), indent=2))
        record = {
            "source_workdir": str(run.workdir.absolute()),
            "step": step,
            "candidates": [c.name for c in run.candidates],
            "alpha": [float(a) for a in alpha],
            **(info or {}),
        }
        (out_dir / "lcsc.json").write_text(json.dumps(record, indent=2))
    return out_dir
