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
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from cmjax.config.hparams import TrainHParams
from cmjax.core import parallel
from cmjax.core.state import TrainState
from cmjax.errors import CheckpointError, CombineError
from cmjax.workdir.atomic import write_text_atomic
from cmjax.workdir.checkpoint import Checkpointer
from cmjax.workdir.runs import RunReader


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
    config: ConfigDict  # as saved with the newest candidate's checkpoint
    hp: TrainHParams  # resolved from it, once
    candidates: list[Candidate]
    stacked: Any  # the params tree with (K, ...) leaves, on device
    anchor: TrainState  # the last restored state: the template of the written checkpoint
    mesh: Any
    frozen_records: dict[str, Any] = dataclasses.field(default_factory=dict)

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
    with RunReader(workdir) as reader:
        available = sorted(reader.steps)
        if not available:
            raise CheckpointError(f"no checkpoint in {reader.checkpointer.directory}; train first")
        steps = available if not steps else sorted(int(s) for s in steps)
        missing = sorted(set(steps) - set(available))
        if missing:
            raise CombineError(f"{workdir} has no checkpoint at step(s) {missing}: {available}")
        newest = reader.run(steps[-1])
        hp = newest.hp
        trees = (["params"] if include_params else []) + (
            [f"ema_{r}" for r in hp.ema_rates] if include_ema else []
        )
        if not trees:
            raise CombineError("nothing to combine: include the raw parameters or the EMA trees")
        candidates = [Candidate(s, t) for s in steps for t in trees]
        mesh = parallel.make_mesh(hp.mesh)
        abstract = reader.abstract(newest, mesh)
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
            if (
                reader.run(step).hp.objective != hp.objective
                or reader.run(step).hp.model != hp.model
            ):
                raise CombineError(
                    f"checkpoint {step} of {workdir} has another objective or network than "
                    f"step {steps[-1]}; combine checkpoints of one configuration"
                )
            state = reader.checkpointer.restore(abstract, step)
            for tree in trees:
                src = state.params if tree == "params" else state.ema(float(tree[4:]))
                stacked = put(stacked, src, jnp.int32(k))
                k += 1
    return StackedRun(
        Path(workdir), newest.config, hp, candidates, stacked, state, mesh, newest.frozen_records
    )


# -- writing ---------------------------------------------------------------------------------
def write_combined(
    out_dir: str | Path, run: StackedRun, alpha: np.ndarray, info: dict[str, Any] | None = None
) -> Path:
    """A new work directory holding one checkpoint (the anchor's step) whose raw parameters
    and every EMA tree are the combination, with the run's config: ``cmjax-sample``,
    ``cmjax-fid`` (via its samples) and ``config.init_from`` read it as any run.
    Also writes ``lcsc.json`` (alpha, candidates, scores).

    Everything is written into ``<out_dir>.partial`` first and renamed to ``out_dir`` last,
    so a killed combination never leaves a directory that reads as a finished one."""
    out_dir = Path(out_dir)
    check_new_workdir(out_dir)
    alpha = np.asarray(alpha, np.float32)
    if alpha.shape != (run.num,) or not math.isclose(float(alpha.sum()), 1.0, abs_tol=1e-5):
        raise CombineError(f"alpha must be {run.num} numbers summing to 1, got {alpha}")
    shardings = jax.tree.map(lambda a: a.sharding, run.anchor.params)
    combined = jax.jit(combine_trees, out_shardings=shardings)(run.stacked, jnp.asarray(alpha))
    finite = jax.tree.reduce(
        lambda a, b: a & b, jax.tree.map(lambda a: jnp.isfinite(a).all(), combined)
    )
    if not bool(finite):
        raise CombineError(
            f"the combination alpha={np.round(alpha, 4).tolist()} has non-finite parameters; "
            "nothing was written (search with a smaller --sigma_init)"
        )
    copies = tuple(jax.tree.map(jnp.copy, combined) for _ in run.anchor.ema_params)
    state = run.anchor.replace(params=combined, ema_params=copies)
    step = int(jax.device_get(run.anchor.step))
    partial = out_dir.with_name(out_dir.name + ".partial")
    if jax.process_index() == 0 and partial.exists():
        shutil.rmtree(partial)  # an earlier combination that was killed
    partial.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(partial, async_save=False)
    try:
        checkpointer.save(step, state, run.config, force=True, frozen=run.frozen_records or None)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    if jax.process_index() == 0:
        write_text_atomic(partial / "config.json", json.dumps(run.config.to_dict(), indent=2))
        record = {
            "source_workdir": str(run.workdir.absolute()),
            "step": step,
            "candidates": [c.name for c in run.candidates],
            "alpha": [float(a) for a in alpha],
            **(info or {}),
        }
        write_text_atomic(partial / "lcsc.json", json.dumps(record, indent=2))
        if out_dir.exists():  # new or empty of checkpoints (check_new_workdir)
            shutil.rmtree(out_dir)
        partial.rename(out_dir)  # the combination appears whole
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("cmjax_lcsc_written")
    return out_dir


def check_new_workdir(out_dir: str | Path) -> None:
    """CombineError unless ``out_dir`` is new or empty of checkpoints (checked before any
    search, so a long search never ends in a refusal)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CombineError(f"--out={out_dir} is a file; choose a new directory")
    ckpts = out_dir / "checkpoints"
    if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
        raise CombineError(f"--out={out_dir} already holds checkpoints; choose a new --out")
