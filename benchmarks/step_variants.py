"""Train-step cost of configs/default.py variants, timed interleaved in one process.

    python benchmarks/step_variants.py '{"base": {}, "c16": {"model.channels": 16}}'

Each variant's step is compiled as the train loop compiles it (``parallel.jit_train_step``);
the variants then run ``--calls`` steps in turn for ``--rounds`` rounds, so a load change on
a shared machine hits them alike. Prints wall ms per step (median and min) and CPU ms per
step (``time.process_time``, all threads of the process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax

from cmjax.config import TrainHParams, load_config
from cmjax.core import parallel
from cmjax.core.step import make_train_step
from cmjax.data import make_dataset
from cmjax.workdir.frozen import load_frozen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", help='JSON {name: {"section.key": value}}')
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    runs = {}
    for name, overrides in json.loads(args.variants).items():
        config = load_config("default")
        for key, value in overrides.items():
            section, leaf = key.split(".")
            config[section][leaf] = value
        hp = TrainHParams.from_config(config)
        mesh = parallel.make_mesh(hp.mesh)
        frozen = load_frozen(hp, mesh)  # sCD's teacher; {} for the others
        abstract = parallel.abstract_train_state(
            hp, mesh, {n: f.network for n, f in frozen.items()}
        )
        state = parallel.create_sharded_train_state(hp, abstract, jax.random.key(0), frozen)
        local = make_dataset(hp.data, hp.training.batch_size, hp.seed).batch(0)
        batch = parallel.global_batch(local, mesh)
        rng = jax.random.key(0)
        ndims = {k: v.ndim for k, v in local.items()}
        step = parallel.jit_train_step(make_train_step(hp), abstract, mesh, ndims)
        compiled = step.lower(state, batch, rng).compile()
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)
        runs[name] = dict(f=compiled, state=state, batch=batch, rng=rng, wall=[], cpu=[])
    for _ in range(args.rounds):
        for run in runs.values():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.calls):
                run["state"], metrics = run["f"](run["state"], run["batch"], run["rng"])
            jax.block_until_ready(metrics)
            run["wall"].append((time.perf_counter() - t0) / args.calls * 1e3)
            run["cpu"].append((time.process_time() - c0) / args.calls * 1e3)
    print("load average", " ".join(f"{v:.2f}" for v in os.getloadavg()))
    for name, run in runs.items():
        print(
            f"{name:16s} wall {statistics.median(run['wall']):8.1f} ms "
            f"(min {min(run['wall']):7.1f})  CPU {statistics.median(run['cpu']):8.1f} ms"
        )


if __name__ == "__main__":
    main()
