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
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cmjax.config.hparams import MeshHParams, TrainHParams
from cmjax.core.run_once import call_once
from cmjax.core.state import (
    TrainState,
    as_hparams,
    attach_frozen,
    check_frozen_networks,
    init_trained_state,
    start_from_frozen,
)
from cmjax.errors import ConfigError, DistributedError
from cmjax.objectives import Frozen, FrozenNetwork

BATCH_AXES = ("data", "fsdp")
# Leaves with fewer elements than this stay replicated under FSDP (biases, norms, scalars).
FSDP_MIN_SIZE = 2**14


def maybe_initialize_distributed(mesh: MeshHParams | None = None) -> None:
    """Call ``jax.distributed.initialize()`` when this run spans several processes.

    Triggered by ``config.mesh.multiprocess = True`` or by the usual cluster variables
    (Cloud TPU pods, SLURM, or JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and
    JAX_PROCESS_ID); a single process does nothing. Multi-process CPU runs (tests) also need
    JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo.
    """
    mesh = mesh or MeshHParams()
    wanted = mesh.multiprocess or any(
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


def make_mesh(mesh: MeshHParams | None = None, devices=None) -> Mesh:
    """A ('data', 'fsdp') mesh over all (or the given) devices, axis types Auto; ``mesh``:
    the run's ``hp.mesh`` (default: data parallel only)."""
    mesh = mesh or MeshHParams()
    devices = list(jax.devices() if devices is None else devices)
    fsdp, dcn_data = mesh.fsdp, mesh.dcn_data
    if len(devices) % fsdp:
        raise ConfigError(f"config.mesh.fsdp={fsdp} does not divide {len(devices)} devices")
    data = len(devices) // fsdp
    auto = (jax.sharding.AxisType.Auto,) * 2
    if dcn_data > 1:
        if data % dcn_data:
            raise ConfigError(f"config.mesh.dcn_data={dcn_data} does not divide data={data}")
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


def abstract_train_state(
    config_or_hparams: Mapping[str, Any] | TrainHParams,
    mesh: Mesh,
    frozen_nets: Mapping[str, FrozenNetwork] | None = None,
) -> TrainState:
    """The TrainState as ShapeDtypeStructs carrying their shardings (nothing allocated);
    ``frozen_nets``: the definitions of the frozen networks the objective reads."""
    hp = as_hparams(config_or_hparams)
    abstract = jax.eval_shape(lambda r: init_trained_state(hp, r), jax.random.key(0))
    return with_abstract_frozen(_place(abstract, mesh), frozen_nets, mesh)


def _place(abstract: TrainState, mesh: Mesh) -> TrainState:
    shardings = state_shardings(abstract, mesh)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def with_abstract_frozen(
    abstract: TrainState, frozen_nets: Mapping[str, FrozenNetwork] | None, mesh: Mesh
) -> TrainState:
    """An abstract state of trained networks with the frozen networks' abstract parameters
    (and their shardings on ``mesh``) attached."""
    if not frozen_nets:
        return abstract
    frozen = {n: Frozen(d, d.abstract_params()) for n, d in frozen_nets.items()}
    params = _place(attach_frozen(abstract.replace(frozen=None), frozen), mesh).frozen
    return attach_frozen(abstract, {n: Frozen(d, params[n]) for n, d in frozen_nets.items()})


def create_sharded_train_state(
    config_or_hparams: Mapping[str, Any] | TrainHParams,
    abstract_state: TrainState,
    rng: jax.Array,
    frozen: Mapping[str, Frozen] | None = None,
) -> TrainState:
    """Initialize the state directly into the shardings of ``abstract_state``.

    No host ever holds the full state. The result shares ``abstract_state``'s static fields
    (modules, optimizers), so shardings derived from the abstract state fit it exactly. The
    frozen networks' ``params`` (``cmjax.load_frozen``) are placed into their shardings.
    """
    hp = as_hparams(config_or_hparams)
    check_frozen_networks(hp, frozen)
    trained = abstract_state.replace(frozen=None, frozen_nets=())
    leaves, treedef = jax.tree.flatten(trained)
    init = jax.jit(
        lambda r: jax.tree.leaves(init_trained_state(hp, r)),
        out_shardings=[leaf.sharding for leaf in leaves],
    )
    state = jax.tree.unflatten(treedef, call_once(init, rng))
    if not frozen:
        return state
    placed = {
        name: Frozen(
            f.network,
            jax.tree.map(
                lambda v, a: jax.device_put(jnp.asarray(v, a.dtype), a.sharding),
                f.params,
                abstract_state.frozen[name],
            ),
        )
        for name, f in frozen.items()
    }
    return start_from_frozen(hp, attach_frozen(state, placed))


def sharded_train_state(
    config_or_hparams: Mapping[str, Any] | TrainHParams,
    mesh: Mesh,
    rng: jax.Array,
    frozen: Mapping[str, Frozen] | None = None,
) -> tuple[TrainState, TrainState]:
    """(a fresh state initialized into its shardings on ``mesh``, its abstract layout), with
    the frozen networks ``cmjax.load_frozen(hp, mesh)`` returned placed beside it."""
    hp = as_hparams(config_or_hparams)
    defs = {n: f.network for n, f in (frozen or {}).items()}
    abstract = abstract_train_state(hp, mesh, defs)
    return create_sharded_train_state(hp, abstract, rng, frozen), abstract


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
