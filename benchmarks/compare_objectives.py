"""Equal-budget comparison of the objectives on the 2-D toys and the digits default.

    python benchmarks/compare_objectives.py [--steps 2000] [--toys two_moons,...]
        [--digits-steps 600] [--digits-ema 0.99]

For each dataset, with the same number of training steps (and the same batch, network,
optimizer and EMA) for every row:

- ``ict``: iCT from scratch, 1- and 2-step consistency samples;
- ``edm``: EDM diffusion, Heun on 18 sigmas (35 NFE);
- ``ect``: ECT from scratch;
- ``edm->ect``: EDM for half the steps, then ECT for the other half started from the EDM
  run's EMA through ``config.init_from`` (the EDM steps count in the budget).

Quality: sliced 2-Wasserstein distance (512 projections) of samples from the EMA parameters to
held-out data; "data" is the distance between two independent data draws (the floor). Digits
(8x8, class-conditional, labels uniform) use the flattened 64-dim images: a crude proxy, not
FID. Lower is better.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from cmjax import TrainHParams, create_train_state, make_train_step, parallel
from cmjax.checkpoint import Checkpointer
from cmjax.config_loading import load_config
from cmjax.data import make_dataset
from cmjax.evaluation.sliced_wasserstein import sliced_wasserstein
from cmjax.init_from import apply_init_from
from cmjax.sampling import make_sampler

ROWS = ("ict", "edm", "ect", "edm->ect")


def train(config, state=None, first_step: int = 0):
    """``config.training.total_steps`` steps from ``state`` (default: a fresh one)."""
    step = jax.jit(make_train_step(config), donate_argnums=0)
    if state is None:
        state = create_train_state(config, jax.random.key(config.seed))
    data = make_dataset(config)
    for k in range(config.training.total_steps):
        state, metrics = step(state, data.batch(first_step + k))
    assert np.isfinite(float(metrics["loss"])), metrics
    return state


def held_out(config, n: int, offset: int) -> np.ndarray:
    data = make_dataset(config)
    out, k = [], 0
    while sum(len(b) for b in out) < n:
        out.append(np.asarray(data.batch(10**6 + offset + k)["x"]).reshape(-1, *config.data.shape))
        k += 1
    return np.concatenate(out)[:n]


def quality(config, state, n: int) -> dict[str, float]:
    """Sliced W2 of each default sampler's samples (EMA parameters) to held-out data."""
    hp = TrainHParams.from_config(config)
    ref = held_out(config, n, 0).reshape(n, -1)
    labels = jax.numpy.arange(n) % hp.num_classes if hp.num_classes else None
    out = {}
    for name, plan in hp.objective.sampler_plans().items():
        draw = make_sampler(hp.objective, state.apply_fn, (n, *hp.data_shape), plan)
        x = np.asarray(draw(state.ema_params[0], jax.random.key(5), labels)).reshape(n, -1)
        key = "1-step" if name == "1step" else "2-step" if name == "2step" else name
        out[key] = float(sliced_wasserstein(x, ref, jax.random.key(7)))
    return out


def data_floor(config, n: int) -> float:
    a = held_out(config, n, 0).reshape(n, -1)
    b = held_out(config, n, 5000).reshape(n, -1)
    return float(sliced_wasserstein(a, b, jax.random.key(7)))


def run_rows(make_config, steps: int, n: int, workdir: Path) -> dict[str, dict[str, float]]:
    results = {}
    for row in ROWS:
        start = time.perf_counter()
        if row != "edm->ect":
            config = make_config(row, steps)
            state = train(config)
        else:
            edm = make_config("edm", steps // 2)
            edm_state = train(edm)
            ckpt = Checkpointer(workdir / "edm_half", async_save=False)
            ckpt.save(steps // 2, edm_state, edm, force=True)
            ckpt.wait_until_finished()
            ckpt.close()
            config = make_config("ect", steps - steps // 2)
            config.init_from = str(workdir / "edm_half")
            mesh = parallel.make_mesh({}, devices=jax.devices()[:1])
            fresh = create_train_state(config, jax.random.key(config.seed))
            state = train(config, apply_init_from(config, fresh, mesh))
        seconds = time.perf_counter() - start
        results[row] = {**quality(config, state, n), "train s": seconds}
        print(f"  {row:9s} {results[row]}", flush=True)
    return results


def table(title: str, steps: int, results, floor: float) -> str:
    lines = [
        f"{title}, {steps} steps per row",
        "",
        "| objective | 1-step | 2-step | Heun 18 (35 NFE) | data | train s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row, q in results.items():
        cells = [q.get(k) for k in ("1-step", "2-step", "heun18")]
        shown = " | ".join("-" if c is None else f"{c:.4f}" for c in cells)
        lines.append(f"| {row} | {shown} | {floor:.4f} | {q['train s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="toy steps per row")
    parser.add_argument("--toys", default="two_moons,gaussian_mixture,checkerboard")
    parser.add_argument("--digits-steps", type=int, default=600, help="0: skip the digits")
    parser.add_argument("--digits-ema", type=float, default=0.99)
    args = parser.parse_args()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for toy in filter(None, args.toys.split(",")):

            def make_toy(objective, steps, toy=toy):
                config = load_config(f"toy2d:{toy},{objective}")
                config.training.total_steps = steps
                return config

            print(f"{toy}:", flush=True)
            res = run_rows(make_toy, args.steps, 4000, Path(tmp) / toy)
            out.append(table(f"toy2d:{toy}", args.steps, res, data_floor(make_toy("ict", 1), 4000)))
        if args.digits_steps:

            def make_digits(objective, steps):
                config = load_config(f"default:{objective}")
                config.training.update(total_steps=steps, ema_rates=(args.digits_ema,))
                return config

            print("digits:", flush=True)
            res = run_rows(make_digits, args.digits_steps, 1000, Path(tmp) / "digits")
            floor = data_floor(make_digits("ict", 1), 1000)
            out.append(table(f"digits (EMA {args.digits_ema})", args.digits_steps, res, floor))
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
