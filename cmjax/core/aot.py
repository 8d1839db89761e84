"""Ahead-of-time compilation of the train step for devices this machine does not have.

``compile_train_step(hp, devices, per_chip_batch)`` lowers and compiles *the step the loop
runs* (``make_train_step`` jitted by ``parallel.jit_train_step``: the same state and batch
shardings over the run's ('data', 'fsdp') mesh, the state donated) against abstract inputs
(ShapeDtypeStructs: nothing is allocated), and reads the compiler's own analyses: per-chip
memory (arguments, temporaries, outputs) and the cost model (FLOPs, bytes accessed, and on TPU
an estimated step time). With ``jax.experimental.topologies.get_topology_desc`` (libtpu
installed) the devices are real TPU chips of any topology, compiled for on a CPU-only machine.

Every number here is the compiler's estimate, not a measurement.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cmjax.config.hparams import TrainHParams
from cmjax.core import parallel
from cmjax.core.step import make_train_step
from cmjax.objectives import FrozenNetwork

# Per chip: dense bf16 peak FLOP/s and HBM bytes (Google Cloud's published figures).
CHIPS: dict[str, tuple[float, float]] = {
    "v4": (275e12, 32 * 2**30),
    "v5e": (197e12, 16 * 2**30),
    "v5p": (459e12, 95 * 2**30),
    "v6e": (918e12, 32 * 2**30),
}


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """What the compiler says of one train step. Bytes are per chip; FLOPs per chip and step
    unless named otherwise; ``estimated_step_s`` is XLA's cost model (TPU only, else None)."""

    devices: int
    processes: int
    mesh: dict[str, int]
    per_chip_batch: int
    global_batch: int
    compile_s: float
    argument_bytes: int
    temp_bytes: int
    output_bytes: int
    alias_bytes: int
    flops: float
    bytes_accessed: float
    estimated_step_s: float | None
    hbm_bytes: float | None = None  # the chip's capacity, when known
    peak_flops: float | None = None

    @property
    def peak_bytes(self) -> int:
        """Arguments + temporaries + outputs not aliased to (donated) arguments."""
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.hbm_bytes is None else self.peak_bytes <= self.hbm_bytes

    @property
    def flops_per_image(self) -> float:
        return self.flops * self.devices / self.global_batch

    @property
    def images_per_s_per_chip(self) -> float | None:
        if not self.estimated_step_s:
            return None
        return self.per_chip_batch / self.estimated_step_s

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilization implied by the estimate: flops / (step time x peak)."""
        if not self.estimated_step_s or not self.peak_flops:
            return None
        return self.flops / (self.estimated_step_s * self.peak_flops)

    def lines(self) -> list[str]:
        cap = f" of {_size(self.hbm_bytes)}" if self.hbm_bytes else ""
        fits = {True: " (fits)", False: " (DOES NOT FIT)", None: ""}[self.fits]
        out = [
            f"devices {self.devices} on {self.processes} host(s), mesh {self.mesh}, batch "
            f"{self.per_chip_batch} per chip ({self.global_batch} in all)",
            f"compile time {self.compile_s:.1f} s",
            f"memory per chip (compiler): arguments {_size(self.argument_bytes)}, temporaries "
            f"{_size(self.temp_bytes)}, outputs {_size(self.output_bytes)} (donated "
            f"{_size(self.alias_bytes)}); peak {_size(self.peak_bytes)}{cap}{fits}",
            f"FLOPs (compiler): {_flop(self.flops)} per chip and step, "
            f"{_flop(self.flops_per_image)} per image",
        ]
        if self.estimated_step_s:
            mfu = f", MFU {self.mfu:.2f}" if self.mfu is not None else ""
            out.append(
                f"estimated step time (XLA cost model): {self.estimated_step_s * 1e3:.2f} ms = "
                f"{self.images_per_s_per_chip:.0f} images/s per chip{mfu}"
            )
        return out


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _flop(n: float) -> str:
    return f"{n / 1e9:.2f} GFLOP" if n >= 1e9 else f"{n / 1e6:.2f} MFLOP"


def chip_figures(device_kind: str, topology: str = "") -> tuple[float | None, float | None]:
    """(peak FLOP/s, HBM bytes) of a TPU chip from its topology name ("v5p:2x2x1") or
    device kind ("TPU v5", "TPU v5 lite"); (None, None) when unknown (CPUs, GPUs)."""
    name = topology.split(":")[0].lower() if topology else ""
    if name in CHIPS:
        return CHIPS[name]
    kind = device_kind.lower()
    for key, tag in (("v5e", "v5 lite"), ("v6e", "v6"), ("v5p", "v5"), ("v4", "v4")):
        if tag in kind:
            return CHIPS[key]
    return None, None


def abstract_batch(hp: TrainHParams, mesh, global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch the loop feeds, as sharded ShapeDtypeStructs."""
    x = (global_batch, *hp.data_shape)
    batch = {
        "x": jax.ShapeDtypeStruct(x, jnp.float32, sharding=parallel.batch_sharding(mesh, len(x)))
    }
    if hp.num_classes:
        batch["label"] = jax.ShapeDtypeStruct(
            (global_batch,), jnp.int32, sharding=parallel.batch_sharding(mesh, 1)
        )
    return batch


def compile_train_step(
    hp: TrainHParams,
    devices: Sequence[Any],
    per_chip_batch: int,
    frozen_nets: Mapping[str, FrozenNetwork] | None = None,
    topology: str = "",
) -> CompileReport:
    """Compile the loop's train step for ``devices`` (``hp.mesh`` decides data x fsdp) at
    ``per_chip_batch`` examples per device; ``frozen_nets``: definitions of the frozen
    networks the objective reads (their parameters are abstract too)."""
    devices = list(devices)
    mesh = parallel.make_mesh(hp.mesh, devices)
    global_batch = per_chip_batch * len(devices)
    abstract = parallel.abstract_train_state(hp, mesh, frozen_nets)
    batch = abstract_batch(hp, mesh, global_batch)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=NamedSharding(mesh, P()))
    step = parallel.jit_train_step(
        make_train_step(hp), abstract, mesh, {k: len(v.shape) for k, v in batch.items()}
    )
    t0 = time.perf_counter()
    compiled = step.lower(abstract, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    cost = dict(cost or {})
    peak, hbm = chip_figures(getattr(devices[0], "device_kind", ""), topology)
    return CompileReport(
        devices=len(devices),
        processes=len({d.process_index for d in devices}),
        mesh=dict(mesh.shape),
        per_chip_batch=per_chip_batch,
        global_batch=global_batch,
        compile_s=compile_s,
        argument_bytes=int(getattr(mem, "argument_size_in_bytes", 0)),
        temp_bytes=int(getattr(mem, "temp_size_in_bytes", 0)),
        output_bytes=int(getattr(mem, "output_size_in_bytes", 0)),
        alias_bytes=int(getattr(mem, "alias_size_in_bytes", 0)),
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        estimated_step_s=float(cost["optimal_seconds"]) if cost.get("optimal_seconds") else None,
        hbm_bytes=hbm,
        peak_flops=peak,
    )
