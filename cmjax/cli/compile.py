"""``cmjax-compile --config=configs/x.py[:variant] --topology=v5p:2x2x1 --per_chip_batch=128``.

Compiles the train step the loop runs for a Cloud TPU topology on this machine (no TPU
needed, but libtpu: ``pip install "cmjax[tpu]"`` in a separate virtual environment) and
prints the compiler's per-chip memory, FLOPs, estimated step time, images/s per chip and the
MFU that estimate implies, and the compile time. ``--topology=cpu`` compiles for this
machine's own devices instead (no libtpu; no time estimate). The mesh is the config's
(``--config.mesh.fsdp=2``, ``--config.mesh.dcn_data=2`` for two slices); the compute dtype is
the network's (``--config.model.dtype=bfloat16``). ``--max_batch`` doubles the per-chip batch
from ``--per_chip_batch`` while the step fits the chip's memory, then bisects.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from cmjax.cli.runner import Command
from cmjax.errors import UserError


def define(fv: flags.FlagValues, argv: Sequence[str]) -> None:
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Training config: configs/<name>.py[:variant]; any key is set with --config.KEY=VALUE.",
        flag_values=fv,
        lock_config=True,
        sys_argv=list(argv),
    )
    flags.DEFINE_string(
        "topology",
        "v5p:2x2x1",
        "A TPU topology (v4:2x2x1, v5e:2x2, v5p:2x2x2, v6e:2x2, ...) or 'cpu' (this machine).",
        flag_values=fv,
    )
    flags.DEFINE_integer("per_chip_batch", 64, "Examples per chip and step.", flag_values=fv)
    flags.DEFINE_bool(
        "max_batch", False, "Search the largest per-chip batch that fits.", flag_values=fv
    )


def tpu_devices(topology: str, num_slices: int):
    """The devices of a TPU topology, compiled for from this machine (libtpu needed)."""
    if importlib.util.find_spec("libtpu") is None:
        raise UserError(
            "compiling for a TPU needs libtpu: in a separate virtual environment run "
            'pip install "cmjax[tpu]" (or pass --topology=cpu)'
        )
    from jax.experimental import topologies

    # libtpu's machine-wide lock would refuse a second process (pytest -n); without a TPU
    # metadata server it wants worker hostnames. Set only while the topology is made, so a
    # later cmjax-train in this process does not take the machine for a TPU host.
    env = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_WORKER_HOSTNAMES": "localhost"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: os.environ.get(k) or v for k, v in env.items()})
    try:
        kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
        return topologies.get_topology_desc(
            platform="tpu", topology_name=topology, **kwargs
        ).devices
    except Exception as e:  # libtpu's own message names what is wrong with the name
        raise UserError(
            f"--topology={topology} is not a TPU topology libtpu knows (e.g. v5p:2x2x1, "
            f"v5e:2x2, v4:2x2x2): {str(e).splitlines()[0][:200]}"
        ) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def frozen_definitions(hp):
    """Stand-ins for the frozen networks (their parameters are abstract anyway): a teacher
    run's own config when its work directory is given, else the student's network under the
    teacher kind's objective; file-loaded networks as their loader builds them."""
    from cmjax.config.sections import objective_class
    from cmjax.objectives import FrozenNetwork
    from cmjax.workdir.runs import RunReader
    from cmjax.workdir.weights import file_network

    out = {}
    for name, spec in hp.objective.frozen_networks().items():
        if spec.loader != "run":
            out[name] = file_network(spec.loader).definition()
        elif spec.source:
            with RunReader(spec.source, what=spec.key) as reader:
                out[name] = FrozenNetwork.from_hparams(reader.run().hp)
        else:
            own = FrozenNetwork.from_hparams(hp)
            kind = objective_class(spec.kinds[0])
            extra = {"noise_cond_scale": hp.objective.noise_cond_scale}
            if hasattr(hp.objective, "sigma_data"):
                extra["sigma_data"] = hp.objective.sigma_data
            out[name] = FrozenNetwork(kind(**extra), own.model, own.data_shape, own.num_classes)
            logging.getLogger("cmjax").info(
                "frozen network %r: no source given, compiled with the student's network as "
                "a stand-in (%s)",
                name,
                spec.key,
            )
    return out


def main(fv: flags.FlagValues) -> None:
    from cmjax.cli.train import progress_on_stdout

    with progress_on_stdout() as log:
        import jax

        from cmjax.config import TrainHParams
        from cmjax.core.aot import compile_train_step

        hp = TrainHParams.from_config(fv.config)
        if fv.per_chip_batch < 1:
            raise UserError(f"--per_chip_batch must be >= 1, got {fv.per_chip_batch}")
        if fv.topology == "cpu":
            devices = jax.devices()
        else:
            devices = tpu_devices(fv.topology, hp.mesh.dcn_data)
        frozen = frozen_definitions(hp)
        topology = "" if fv.topology == "cpu" else fv.topology

        def report(batch):
            log.info("compiling for %s at %d per chip ...", fv.topology, batch)
            r = compile_train_step(hp, devices, batch, frozen, topology)
            for line in r.lines():
                print(f"  {line}", flush=True)
            return r

        r = report(fv.per_chip_batch)
        if not fv.max_batch:
            return
        if r.fits is None:
            raise UserError("--max_batch needs a TPU topology (the chip's memory is known)")
        lo, hi = (fv.per_chip_batch, None) if r.fits else (0, fv.per_chip_batch)
        while hi is None:  # double until it does not fit
            nxt = lo * 2
            if report(nxt).fits:
                lo = nxt
            else:
                hi = nxt
        while hi - lo > max(1, lo // 8):  # bisect to 1/8 of the batch
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if report(mid).fits else (lo, mid)
        if lo == 0:
            print("  no per-chip batch fits", flush=True)
        else:
            print(f"  largest per-chip batch that fits (to 1/8): {lo}", flush=True)


COMMAND = Command(
    "cmjax-compile",
    "Compile the train step for a TPU topology on this machine; the compiler's memory, FLOPs "
    "and time estimate.",
    define,
    main,
    required=("config",),
)
run = COMMAND.run

if __name__ == "__main__":
    run()
