"""TrigFlow -> sCT and TrigFlow -> sCD against sCT from scratch and TrigFlow alone, at an equal
budget of training steps (the TrigFlow steps count), on a 2-D toy: sliced W2 to held-out data.

    python benchmarks/sct_toy.py --budget 2000 --dist two_moons

"TrigFlow -> sCT": TrigFlow for budget/2 steps, then sCT for budget/2 from its EMA (fresh
optimizer, the EMA restarted at the initialization); sCD likewise with that TrigFlow run as
its frozen teacher. Distances are of 4000 samples (1 and 2 consistency steps; DDIM for
TrigFlow), averaged over ``--seeds`` training seeds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cmjax import create_train_state, make_train_step  # noqa: E402
from cmjax.config import TrainHParams, load_config  # noqa: E402
from cmjax.core.sampling import make_sampler  # noqa: E402
from cmjax.data import make_dataset  # noqa: E402
from cmjax.evaluation.sliced_wasserstein import sliced_wasserstein  # noqa: E402
from cmjax.workdir.checkpoint import Checkpointer  # noqa: E402
from cmjax.workdir.frozen import load_frozen  # noqa: E402


def toy_config(dist: str, objective: str, steps: int, seed: int):
    config = load_config(f"toy2d:{dist},{objective}")
    config.training.total_steps = steps
    config.seed = seed
    return config


def dataset(hp: TrainHParams):
    return make_dataset(hp.data, hp.training.batch_size, hp.seed)


def train(hp: TrainHParams, state=None, offset: int = 0):
    """``hp.training.total_steps`` steps from ``state`` (default: fresh); the data stream
    continues at ``offset`` so a second stage sees new batches."""
    step = jax.jit(make_train_step(hp), donate_argnums=0)
    if state is None:
        state = create_train_state(hp, jax.random.key(hp.seed))
    data = dataset(hp)
    for k in range(hp.training.total_steps):
        state, _ = step(state, data.batch(offset + k))
    return state


def start_from(hp: TrainHParams, trig_state):
    """A fresh consistency state whose network (and EMA) is the TrigFlow run's EMA; sCD's
    frozen teacher is read from ``hp.objective.teacher``."""
    state = create_train_state(hp, jax.random.key(hp.seed), frozen=load_frozen(hp))
    # Own buffers: the consistency step donates its state, the TrigFlow EMA is used again.
    net = jax.tree.map(jnp.copy, trig_state.ema_params[0])
    params = hp.objective.replace_net_params(state.params, net)
    return state.replace(
        params=params,
        ema_params=tuple(jax.tree.map(jnp.copy, params) for _ in state.ema_params),
        opt_state=state.tx.init(params),
    )


def distances(hp: TrainHParams, state, held, plans) -> dict[str, float]:
    out = {}
    for name, plan in plans(hp.objective).items():
        draw = make_sampler(hp.objective, state.apply_fn, (len(held), 2), plan)
        x = draw(state.ema_params[0], jax.random.key(5))
        out[name] = float(sliced_wasserstein(x, held, jax.random.key(7)))
    return out


def consistency_plans(obj):
    return {"1 step": obj.plan(1), "2 steps": obj.plan(2)}


def ddim_plans(obj):
    return {"1 step": obj.plan(1), "2 steps": obj.plan(2), "DDIM 50": obj.plan(50)}


def run(budget: int, dist: str, seed: int, workdir: Path) -> dict[str, dict[str, float]]:
    half = budget // 2
    data = dataset(TrainHParams.from_config(toy_config(dist, "trigflow", 1, seed)))
    held = np.concatenate([data.batch(10**6 + i)["x"] for i in range(8)])[:4000]
    rows = {}

    def record(label, values):
        rows[label] = values
        print(f"seed {seed}: {label}: {values}", flush=True)

    hp = TrainHParams.from_config(toy_config(dist, "trigflow", budget, seed))
    record(f"TrigFlow ({budget})", distances(hp, train(hp), held, ddim_plans))
    hp = TrainHParams.from_config(toy_config(dist, "sct", budget, seed))
    record(f"sCT from scratch ({budget})", distances(hp, train(hp), held, consistency_plans))
    trig_cfg = toy_config(dist, "trigflow", half, seed)
    trig_hp = TrainHParams.from_config(trig_cfg)
    trig = train(trig_hp)
    teacher = workdir / f"trigflow_{seed}"
    ckpt = Checkpointer(teacher, async_save=False)
    ckpt.save(half, trig, trig_cfg, force=True)
    ckpt.wait_until_finished()
    ckpt.close()
    record(f"TrigFlow ({half})", distances(trig_hp, trig, held, ddim_plans))
    for name in ("sct", "scd"):
        cfg = toy_config(dist, name, budget - half, seed)
        if name == "scd":
            cfg.objective.teacher = str(teacher)
        hp = TrainHParams.from_config(cfg)
        state = train(hp, start_from(hp, trig), offset=half)
        label = f"TrigFlow ({half}) -> {name.upper().replace('SC', 'sC')} ({budget - half})"
        record(label, distances(hp, state, held, consistency_plans))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=2000)
    parser.add_argument("--dist", default="two_moons")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for k, v in run(args.budget, args.dist, seed, Path(tmp)).items():
                results.setdefault(k, []).append(v)
    cols = ["1 step", "2 steps", "DDIM 50"]
    print(f"| {args.dist}, {args.budget} steps in all | " + " | ".join(cols) + " |")
    print("| --- |" + " --- |" * len(cols))
    for name, vals in results.items():
        cells = [f"{np.mean([v[c] for v in vals]):.4f}" if c in vals[0] else "-" for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
