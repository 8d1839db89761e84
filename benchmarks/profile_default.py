"""Where the default digits run spends its time on the CPU: one row per piece of a step.

    python benchmarks/profile_default.py                      # configs/default.py
    python benchmarks/profile_default.py --set model.channels=16 --set training.batch_size=64

Each piece is jitted on its own (as in the train loop: one device, the run's shardings) and
timed in rounds that interleave the pieces, so a load change on a shared machine hits them
all alike; the table gives the median over rounds in ms per call and the share of one full
train step. Pieces: host batch (numpy slicing and scaling), device transfer, student forward,
student + teacher forward, loss forward + backward, optimizer update, EMA update, the whole
compiled step, the one-step-late metric fetch, one 1- plus 2-step sample-grid write and one
checkpoint save (both amortised over their ``*_every`` steps in the last column).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from cmjax.config import TrainHParams, load_config
from cmjax.core import parallel
from cmjax.core.sampling import SamplerCache
from cmjax.core.step import ema_update, make_train_step
from cmjax.data import make_dataset
from cmjax.objectives.distances import get_distance
from cmjax.objectives.preconditioning import consistency_fn, student_teacher_outputs
from cmjax.training.reporting import write_samples
from cmjax.workdir.checkpoint import Checkpointer


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default")
    ap.add_argument("--set", action="append", default=[], help="section.key=value override")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20, help="calls per piece per round")
    args = ap.parse_args()
    config = load_config(args.config)
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        config[section][name] = parse_value(value)
    hp = TrainHParams.from_config(config)
    obj = hp.objective
    if obj.name != "ict":  # the pieces below are iCT's (consistency pairs, one distance)
        ap.error(f"the pieces profiled are iCT's; {args.config} trains {obj.name!r}")
    mesh = parallel.make_mesh(hp.mesh)
    abstract = parallel.abstract_train_state(hp, mesh)
    state = parallel.create_sharded_train_state(hp, abstract, jax.random.key(0))
    dataset = make_dataset(hp.data, hp.training.batch_size, hp.seed)
    local = dataset.batch(0)
    batch = parallel.global_batch(local, mesh)
    rng = jax.random.key(0)
    b = hp.training.batch_size
    x, labels = batch["x"], batch.get("label")
    z = jax.random.normal(jax.random.key(1), x.shape)
    sigma = jnp.full((b,), 1.0)
    sigma_next = jnp.full((b,), 0.8)
    kw = dict(
        sigma_data=obj.sigma_data, sigma_min=obj.sigma_min, noise_cond_scale=obj.noise_cond_scale
    )
    distance = get_distance(obj.loss_name)

    student = jax.jit(
        lambda p: consistency_fn(
            state.apply_fn, p, x, sigma, labels, train=True, dropout_rng=rng, **kw
        )
    )
    both = jax.jit(
        lambda p: student_teacher_outputs(
            state.apply_fn, p, x, z, sigma, sigma_next, labels, rng, **kw
        )
    )

    def loss(p):
        s, t = student_teacher_outputs(
            state.apply_fn, p, x, z, sigma, sigma_next, labels, rng, **kw
        )
        return jnp.mean(distance(s, t, obj.loss_c))

    grad = jax.jit(jax.value_and_grad(loss))
    grads = grad(state.params)[1]
    opt = jax.jit(
        lambda g, o, p: (lambda u, o2: (optax.apply_updates(p, u), o2))(*state.tx.update(g, o, p))
    )
    ema = jax.jit(lambda e, p: ema_update(e, p, hp.ema_rates[0]))
    step_fn = parallel.jit_train_step(
        make_train_step(hp), abstract, mesh, {k: v.ndim for k, v in local.items()}
    )
    compiled = step_fn.lower(state, batch, rng).compile()
    # The compiled step donates its state: give it its own copy.
    holder = {"state": jax.tree.map(jnp.copy, state), "metrics": None}

    def full_step():
        holder["state"], holder["metrics"] = compiled(holder["state"], batch, rng)
        return holder["metrics"]["loss"]

    pieces = {
        "host batch (numpy)": lambda: dataset.batch(1),
        "host -> device batch": lambda: jax.block_until_ready(parallel.global_batch(local, mesh)),
        "student forward": lambda: student(state.params),
        "student + teacher forward": lambda: both(state.params),
        "loss forward + backward": lambda: grad(state.params),
        "optimizer update (RAdam)": lambda: opt(grads, state.opt_state, state.params),
        "EMA update": lambda: ema(state.ema_params[0], state.params),
        "whole train step": full_step,
        "metric fetch (device_get)": lambda: jax.device_get(holder["metrics"]),
    }
    for f in pieces.values():  # compile and warm up
        jax.block_until_ready(f())
    times = {k: [] for k in pieces}
    for _ in range(args.rounds):
        for name, f in pieces.items():
            t0 = time.perf_counter()
            for _ in range(args.calls):
                out = f()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t0) / args.calls * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}

    workdir = Path(tempfile.mkdtemp())
    from clu import metric_writers

    writer = metric_writers.create_default_writer(str(workdir))
    once = {}
    t0 = time.perf_counter()
    samplers = SamplerCache(obj, state.apply_fn)
    write_samples(hp, holder["state"], workdir, writer, 1, samplers)
    once["sample grids (1+2 step, compiles)"] = (time.perf_counter() - t0) * 1e3
    ckpt = Checkpointer(workdir / "ckpt", every_steps=1, keep=1, async_save=True)
    t0 = time.perf_counter()
    ckpt.save(1, holder["state"], config, force=True)
    ckpt.wait_until_finished()
    once["checkpoint save (waited)"] = (time.perf_counter() - t0) * 1e3
    ckpt.close()
    writer.close()
    every = {
        "sample grids (1+2 step, compiles)": hp.training.sample_every,
        "checkpoint save (waited)": hp.checkpoint.every_steps,
    }

    step = ms["whole train step"]
    load = os.getloadavg()
    print(
        f"config {args.config} {' '.join(args.set)}; batch {b}; {jax.device_count()} device(s); "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    print("| piece | ms per call | share of a step | ms per step amortised |")
    print("| --- | --- | --- | --- |")
    for name, t in ms.items():
        print(f"| {name} | {t:.2f} | {100 * t / step:.0f}% | |")
    for name, t in once.items():
        n = every[name] or 0
        amort = f"{t / n:.2f}" if n else "n/a"
        print(f"| {name} | {t:.0f} | | {amort} (every {n}) |")
    print(f"whole step: {b / step * 1e3:.0f} images/s")


if __name__ == "__main__":
    main()
