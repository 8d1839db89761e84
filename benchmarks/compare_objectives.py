"""Equal-budget comparison of the objectives on the 2-D toys and the digits default.

    python benchmarks/compare_objectives.py [--steps 2000] [--toys two_moons,...]
        [--digits-steps 600] [--digits-ema 0.99] [--rows ict,edm,...]

For each dataset, with the same number of training steps (and the same batch, network,
optimizer and EMA) for every row:

- ``ict``: iCT from scratch, 1- and 2-step consistency samples;
- ``edm``: EDM diffusion, Heun on 18 sigmas (35 NFE);
- ``ect``: ECT from scratch;
- ``edm->ect``: EDM for half the steps, then ECT for the other half started from the EDM
  run's EMA through ``config.init_from`` (the EDM steps count in the budget);
- ``trigflow->sct`` / ``trigflow->scd``: TrigFlow diffusion for half the steps, then sCT (from
  its EMA through ``config.init_from``) or sCD (the same, with the TrigFlow run as the frozen
  teacher) for the other half; both share one TrigFlow half-run;
- ``meanflow``: MeanFlow from scratch.

Quality, lower is better: on the toys the sliced 2-Wasserstein distance (512 projections) of
4,000 samples from the EMA parameters to held-out data; on the digits (8x8, class-conditional,
labels uniform) the digits FD proxy of 1,000 samples (cmjax/evaluation/digits_proxy.py: a
Frechet distance in a small classifier's features, not FID). "data" is the floor (two data
draws; for the digits, the two halves of the data set).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from cmjax import create_train_state, images, make_train_step
from cmjax.config import TrainHParams, load_config
from cmjax.core import parallel
from cmjax.core.sampling import make_sampler
from cmjax.data import make_dataset
from cmjax.evaluation import digits_proxy
from cmjax.evaluation.evaluator import generate
from cmjax.evaluation.sliced_wasserstein import sliced_wasserstein
from cmjax.workdir.checkpoint import Checkpointer
from cmjax.workdir.frozen import load_frozen
from cmjax.workdir.init_from import apply_init_from

# row -> (first stage's objective or None, the row's objective); a first stage trains half
# the budget and the row's objective starts from its EMA for the other half.
ROWS = {
    "ict": (None, "ict"),
    "edm": (None, "edm"),
    "ect": (None, "ect"),
    "edm->ect": ("edm", "ect"),
    "trigflow->sct": ("trigflow", "sct"),
    "trigflow->scd": ("trigflow", "scd"),
    "meanflow": (None, "meanflow"),
}


def _dataset(hp):
    return make_dataset(hp.data, hp.training.batch_size, hp.seed)


def train(hp, state=None, first_step: int = 0):
    """``hp.training.total_steps`` steps from ``state`` (default: a fresh one)."""
    step = jax.jit(make_train_step(hp), donate_argnums=0)
    if state is None:
        state = create_train_state(hp, jax.random.key(hp.seed))
    data = _dataset(hp)
    for k in range(hp.training.total_steps):
        state, metrics = step(state, data.batch(first_step + k))
    assert np.isfinite(float(metrics["loss"])), metrics
    return state


def held_out(hp, n: int, offset: int) -> np.ndarray:
    data = _dataset(hp)
    out, k = [], 0
    while sum(len(b) for b in out) < n:
        out.append(np.asarray(data.batch(10**6 + offset + k)["x"]).reshape(-1, *hp.data_shape))
        k += 1
    return np.concatenate(out)[:n]


def _column(name: str) -> str:
    return {"1step": "1-step", "2step": "2-step"}.get(name, name)


def _is_digits(hp) -> bool:
    return digits_proxy.applies_to(hp.data.name, hp.data_shape)


def quality(hp, state, n: int) -> dict[str, float]:
    """Each default sampler's samples (EMA parameters): sliced W2 to held-out data (vectors)
    or the digits FD proxy (8x8 digits, labels uniform over the classes)."""
    digits = _is_digits(hp)
    ref = None if digits else held_out(hp, n, 0).reshape(n, -1)
    labels = jax.numpy.arange(n) % hp.num_classes if hp.num_classes else None
    out = {}
    for name, plan in hp.objective.sampler_plans().items():
        if digits:
            x = images.to_uint8(generate(hp, state, plan, n, min(n, 500), seed=5)[0])
            out[_column(name)] = digits_proxy.digits_fd_proxy(x)
            continue
        draw = make_sampler(hp.objective, state.apply_fn, (n, *hp.data_shape), plan)
        x = np.asarray(draw(state.ema_params[0], jax.random.key(5), labels)).reshape(n, -1)
        out[_column(name)] = float(sliced_wasserstein(x, ref, jax.random.key(7)))
    return out


def data_floor(hp, n: int) -> float:
    if _is_digits(hp):
        return digits_proxy.data_floor()
    a = held_out(hp, n, 0).reshape(n, -1)
    b = held_out(hp, n, 5000).reshape(n, -1)
    return float(sliced_wasserstein(a, b, jax.random.key(7)))


def _save(workdir: Path, state, config, step: int) -> str:
    ckpt = Checkpointer(workdir, async_save=False)
    ckpt.save(step, state, config, force=True)
    ckpt.wait_until_finished()
    ckpt.close()
    return str(workdir)


def run_rows(make_config, steps: int, n: int, workdir: Path, rows) -> dict[str, dict]:
    """Train and score each row at ``steps`` training steps (first stages included);
    ``make_config(objective, steps)`` builds a row's config, resolved here once."""
    results, first_runs = {}, {}
    half = steps // 2
    for row in rows:
        first, objective = ROWS[row]
        start = time.perf_counter()
        if first is None:
            hp = TrainHParams.from_config(make_config(objective, steps))
            state = train(hp)
        else:
            if first not in first_runs:  # one first stage for every row that starts from it
                t0 = time.perf_counter()
                cfg = make_config(first, half)
                state = train(TrainHParams.from_config(cfg))
                path = _save(workdir / f"{first}_half", state, cfg, half)
                first_runs[first] = (path, time.perf_counter() - t0)
            path, first_seconds = first_runs[first]
            start -= first_seconds  # the first stage's time counts in the row
            config = make_config(objective, steps - half)
            config.init_from = path
            if objective == "scd":
                config.objective.teacher = path
            hp = TrainHParams.from_config(config)
            mesh = parallel.make_mesh(devices=jax.devices()[:1])
            frozen = load_frozen(hp, mesh)  # sCD's teacher; {} for the others
            fresh = create_train_state(hp, jax.random.key(hp.seed), frozen=frozen)
            state = train(hp, apply_init_from(hp, fresh, mesh), first_step=half)
        seconds = time.perf_counter() - start
        results[row] = {**quality(hp, state, n), "train s": seconds}
        print(f"  {row:14s} {results[row]}", flush=True)
    return results


def table(title: str, steps: int, results, floor: float) -> str:
    others = sorted({k for q in results.values() for k in q} - {"1-step", "2-step", "train s"})
    lines = [
        f"{title}, {steps} steps per row",
        "",
        "| " + " | ".join(["objective", "1-step", "2-step", *others, "data", "train s"]) + " |",
        "|" + " --- |" * (5 + len(others)),
    ]
    for row, q in results.items():
        cells = [q.get(k) for k in ("1-step", "2-step", *others)]
        shown = " | ".join("-" if c is None else f"{c:.4f}" for c in cells)
        lines.append(f"| {row} | {shown} | {floor:.4f} | {q['train s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="toy steps per row")
    parser.add_argument("--toys", default="two_moons,gaussian_mixture,checkerboard")
    parser.add_argument("--digits-steps", type=int, default=600, help="0: skip the digits")
    parser.add_argument("--digits-ema", type=float, default=0.99)
    parser.add_argument(
        "--rows", default=",".join(ROWS), help="comma-separated, of: " + ", ".join(ROWS)
    )
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for toy in filter(None, args.toys.split(",")):

            def make_toy(objective, steps, toy=toy):
                config = load_config(f"toy2d:{toy},{objective}")
                config.training.total_steps = steps
                return config

            print(f"{toy}:", flush=True)
            res = run_rows(make_toy, args.steps, 4000, Path(tmp) / toy, rows)
            floor = data_floor(TrainHParams.from_config(make_toy("ict", 1)), 4000)
            out.append(table(f"toy2d:{toy}", args.steps, res, floor))
        if args.digits_steps:

            def make_digits(objective, steps):
                config = load_config(f"default:{objective}")
                config.training.update(total_steps=steps, ema_rates=(args.digits_ema,))
                return config

            print("digits:", flush=True)
            res = run_rows(make_digits, args.digits_steps, 1000, Path(tmp) / "digits", rows)
            floor = data_floor(TrainHParams.from_config(make_digits("ict", 1)), 1000)
            out.append(table(f"digits (EMA {args.digits_ema})", args.digits_steps, res, floor))
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
