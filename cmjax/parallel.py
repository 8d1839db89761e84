"""Meshes, shardings and the jit boundary: all parallelism lives here, none in the step.

The mesh has a ``data`` axis (batch) and an ``fsdp`` axis (batch, plus parameter and
optimizer-state sharding when ``config.mesh.fsdp > 1``). On multi-slice pods
``config.mesh.dcn_data`` splits the data axis across slices (DCN) and the rest within (ICI).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cmjax.hparams import TrainHParams
from cmjax.run_once import call_once
from cmjax.train_state import TrainState, create_train_state

BATCH_AXES = ("data", "fsdp")
# Leaves with fewer elements than this stay replicated under FSDP (biases, norms, scalars).
FSDP_MIN_SIZE = 2**14


class DistributedError(RuntimeError):
    """Multi-process initialization failed; the message says what to set."""


def maybe_initialize_distributed(mesh_config: Mapping[str, Any] | None = None) -> None:
    """Call ``jax.distributed.initialize()`` when this run spans several processes.

    Triggered by ``config.mesh.multiprocess = True`` or by the usual cluster variables
    (Cloud TPU pods, SLURM, or JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and
    JAX_PROCESS_ID); a single process does nothing. Multi-process CPU runs (tests) also need
    JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo.
    """
    mesh_config = mesh_config or {}
    wanted = bool(mesh_config.get("multiprocess", False)) or any(
        v in os.environ for v in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES")
    )
    if not wanted or jax.distributed.is_initialized():
        return
    kwargs = {}
    for env, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if env in os.environ:  # jax reads JAX_COORDINATOR_ADDRESS itself, not these two
            kwargs[arg] = int(os.environ[env])
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:
        raise DistributedError(
            "jax.distributed.initialize() failed. On Cloud TPU pods run the same command on every "
            "worker; on GPU clusters launch with srun (SLURM) or set JAX_COORDINATOR_ADDRESS="
            "host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process. "
            f"Cause: {type(e).__name__}: {e}"
        ) from e


def make_mesh(mesh_config: Mapping[str, Any] | None = None, devices=None) -> Mesh:
    """A ('data', 'fsdp') mesh over all (or the given) devices, axis types Auto."""
    mesh_config = mesh_config or {}
    devices = list(jax.devices() if devices is None else devices)
    fsdp = int(mesh_config.get("fsdp", 1))
    dcn_data = int(mesh_config.get("dcn_data", 1))
    if len(devices) % fsdp:
        raise ValueError(f"config.mesh.fsdp={fsdp} does not divide {len(devices)} devices")
    data = len(devices) // fsdp
    auto = (jax.sharding.AxisType.Auto,) * 2
    if dcn_data > 1:
        if data % dcn_data:
            raise ValueError(f"config.mesh.dcn_data={dcn_data} does not divide data={data}")
        grid = mesh_utils.create_hybrid_device_mesh(
            (data // dcn_data, fsdp), (dcn_data, 1), devices=devices
        )
    else:
        grid = np.asarray(devices).reshape(data, fsdp)
    return Mesh(grid, BATCH_AXES, axis_types=auto)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def _param_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard the largest dimension divisible by ``fsdp`` over 'fsdp'; small leaves replicate."""
    if fsdp == 1 or int(np.prod(shape)) < FSDP_MIN_SIZE:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_state: TrainState, mesh: Mesh) -> TrainState:
    """A TrainState of NamedShardings: replicated, or FSDP-sharded when the mesh's fsdp > 1."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, _param_spec(tuple(leaf.shape), fsdp)), abstract_state
    )


def abstract_train_state(config: Mapping[str, Any], mesh: Mesh) -> TrainState:
    """The TrainState as ShapeDtypeStructs carrying their shardings (nothing allocated)."""
    abstract = jax.eval_shape(
        lambda r: create_train_state(config, r, load_frozen=False), jax.random.key(0)
    )
    shardings = state_shardings(abstract, mesh)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def create_sharded_train_state(config: Mapping[str, Any], abstract_state: TrainState, rng):
    """Initialize the state directly into the shardings of ``abstract_state``.

    No host ever holds the full state. The result shares ``abstract_state``'s static fields
    (apply_fn, tx), so shardings derived from the abstract state fit it exactly. Frozen
    parameters (sCD's teacher) are then restored from disk into their shardings.
    """
    from cmjax.teacher import attach_frozen

    leaves, treedef = jax.tree.flatten(abstract_state)
    init = jax.jit(
        lambda r: jax.tree.leaves(create_train_state(config, r, load_frozen=False)),
        out_shardings=[leaf.sharding for leaf in leaves],
    )
    state = jax.tree.unflatten(treedef, call_once(init, rng))
    if state.frozen is None:
        return state
    return attach_frozen(state, TrainHParams.from_config(config).objective)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Per-process numpy batches -> global jax.Arrays sharded over the batch axes."""
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
        for k, v in local_batch.items()
    }


def jit_train_step(
    train_step: Callable, abstract_state: TrainState, mesh: Mesh, batch_ndims: Mapping[str, int]
):
    """``train_step`` jitted with explicit in/out shardings and the state donated."""
    shardings = jax.tree.map(lambda a: a.sharding, abstract_state)
    batch = {k: batch_sharding(mesh, nd) for k, nd in batch_ndims.items()}
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        train_step,
        in_shardings=(shardings, batch, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
