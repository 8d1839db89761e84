"""Train-step and sampler throughput, FLOPs, MFU and peak memory, one table.

    python benchmarks/throughput.py --config cifar10_ict:tiny              # CPU, a minute
    python benchmarks/throughput.py --config cifar10_ict --per-device-batch 128,256

For every compute dtype and per-device batch size: compile time (ahead of time), steady-state
step time, images/s per device and in total, model FLOPs per training image from XLA's cost
analysis of the whole step (student forward + backward, teacher forward, optimizer), MFU
against the device's peak, and peak device memory where the backend reports it; then the
1- and 2-step sampler's images/s. Synthetic data: this measures the step, not the pipeline
(see benchmarks/data_throughput.py).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from cmjax.config import TrainHParams, load_config
from cmjax.core import parallel
from cmjax.core.sampling import make_sampler
from cmjax.core.step import make_train_step
from cmjax.workdir.frozen import load_frozen

# Dense peak TFLOP/s per chip: (bfloat16, float32 matmul as XLA runs it by default).
PEAK_TFLOPS = {
    "H100": (989.0, 494.7),  # SXM; f32 matmuls run as TF32 on tensor cores
    "H200": (989.0, 494.7),
    "A100": (312.0, 156.0),
    "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0),  # v5e
    "TPU v5p": (459.0, 459.0),
    "TPU v5": (459.0, 459.0),
    "TPU v6 lite": (918.0, 918.0),  # v6e (Trillium)
}


def device_peak_tflops(dtype: str, override: float | None) -> float | None:
    if override:
        return override
    kind = jax.devices()[0].device_kind
    for name, (bf16, f32) in PEAK_TFLOPS.items():
        if name in kind:
            return bf16 if dtype == "bfloat16" else f32
    return None


def peak_memory_gib() -> float | None:
    stats = [d.memory_stats() for d in jax.local_devices()]
    if not stats or stats[0] is None or "peak_bytes_in_use" not in stats[0]:
        return None
    return max(s["peak_bytes_in_use"] for s in stats) / 2**30


def synthetic_batch(hp: TrainHParams, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    batch = {"x": rng.uniform(-1, 1, (n, *hp.data_shape)).astype(np.float32)}
    if hp.num_classes:
        batch["label"] = rng.integers(0, hp.num_classes, n).astype(np.int32)
    return batch


def bench_train(spec: str, dtype: str, per_device: int, steps: int, peak: float | None):
    config = load_config(spec)
    if "dtype" in config.model:
        config.model.dtype = dtype
    elif dtype != "float32":
        return None, None  # this network has no compute-dtype switch
    n_dev = jax.device_count()
    config.training.batch_size = per_device * n_dev
    hp = TrainHParams.from_config(config)
    mesh = parallel.make_mesh(hp.mesh)
    frozen = load_frozen(hp, mesh)  # sCD's teacher; {} for the others
    abstract = parallel.abstract_train_state(hp, mesh, {n: f.network for n, f in frozen.items()})
    state = parallel.create_sharded_train_state(hp, abstract, jax.random.key(0), frozen)
    local = synthetic_batch(hp, hp.training.batch_size // jax.process_count())
    batch = parallel.global_batch(local, mesh)
    rng = jax.random.key(0)
    step = parallel.jit_train_step(
        make_train_step(hp), abstract, mesh, {k: v.ndim for k, v in local.items()}
    )
    t0 = time.perf_counter()
    lowered = step.lower(state, batch, rng)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops_per_step = float((lowered.cost_analysis() or {}).get("flops", float("nan")))
    for _ in range(2):  # warm-up
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / steps
    images = hp.training.batch_size / step_s
    mfu = flops_per_step / step_s / (peak * 1e12 * n_dev) if peak else None
    return dict(
        config=spec,
        dtype=dtype,
        batch=per_device,
        compile_s=compile_s,
        step_ms=1e3 * step_s,
        img_s=images,
        img_s_dev=images / n_dev,
        gflop_img=flops_per_step / hp.training.batch_size / 1e9,
        mfu=mfu,
        mem=peak_memory_gib(),
    ), (hp, state)


def bench_sampler(hp: TrainHParams, state, per_device: int, steps: int) -> dict:
    n = per_device * jax.device_count()
    labels = jnp.arange(n) % hp.num_classes if hp.num_classes else None
    out = {}
    for name, plan in hp.objective.sampler_plans().items():
        draw = make_sampler(hp.objective, state.apply_fn, (n, *hp.data_shape), plan)
        jax.block_until_ready(draw(state.ema_params[0], jax.random.key(0), labels))
        t0 = time.perf_counter()
        for i in range(steps):
            x = draw(state.ema_params[0], jax.random.key(i), labels)
        jax.block_until_ready(x)
        out[name] = n * steps / (time.perf_counter() - t0)
    return out


def _fmt(v, spec):
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cifar10_ict:tiny")
    parser.add_argument("--per-device-batch", default="4,8")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="device peak TFLOP/s for MFU on devices not in the table",
    )
    args = parser.parse_args()
    dev = jax.devices()[0]
    print(f"jax {jax.__version__}; {jax.device_count()} x {dev.device_kind} ({dev.platform})")
    header = (
        f"{'config':18s} {'dtype':9s} {'b/dev':>5s} {'compile s':>9s} {'step ms':>9s} "
        f"{'img/s':>9s} {'img/s/dev':>9s} {'GFLOP/img':>9s} {'MFU':>6s} {'peak GiB':>8s}"
    )
    print(header)
    last = None
    for dtype in args.dtypes.split(","):
        for per_device in (int(b) for b in args.per_device_batch.split(",")):
            row, run = bench_train(
                args.config,
                dtype,
                per_device,
                args.steps,
                device_peak_tflops(dtype, args.peak_tflops),
            )
            if row is None:
                print(f"{args.config:18s} {dtype:9s} skipped: the network has no dtype switch")
                continue
            last, last_batch = run, per_device
            print(
                f"{row['config']:18s} {dtype:9s} {per_device:5d} {row['compile_s']:9.1f} "
                f"{row['step_ms']:9.1f} {row['img_s']:9.1f} {row['img_s_dev']:9.1f} "
                f"{row['gflop_img']:9.1f} {_fmt(row['mfu'], '6.1%'):>6s} "
                f"{_fmt(row['mem'], '8.2f'):>8s}",
                flush=True,
            )
    hp, state = last
    rates = bench_sampler(hp, state, last_batch, args.steps)
    print(
        "sampler images/s (EMA params, last dtype and batch): "
        + ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
    )


if __name__ == "__main__":
    main()
