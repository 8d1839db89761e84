"""Distillation at an equal budget of student steps: CD (mu 0 / 0.95; Heun / the sde teacher)
against ECT from the same EDM teacher and iCT from scratch, and sCD on a flow-matching
teacher against sCD on a TrigFlow teacher, on the 2-D toys and the digits.

    python benchmarks/distillation.py [--teacher-steps 1000] [--steps 1000]
        [--toys two_moons,gaussian_mixture] [--digits-teacher-steps 600] [--digits-steps 600]

One EDM teacher per dataset (``--teacher-steps``) serves every CD row and ECT (which starts
from its EMA, ``config.init_from``); each student trains ``--steps`` steps. iCT from scratch
gets teacher + student steps, so every row of the first table has seen the same number of
training steps. CD students start as their teacher (``init_from_teacher``). For sCD, a
TrigFlow and a flow-matching teacher are trained for the same number of steps with the same
network; both sCD students start from a fresh initialization (a flow network's weights are
not a TrigFlow network's), so the rows differ only in the teacher; "trigflow->scd" adds the
usual start from the TrigFlow teacher's weights. Quality (lower is better) as in
benchmarks/compare_objectives.py: sliced W2 of 4,000 samples to held-out data on the toys,
the digits FD proxy of 1,000 samples; "teacher" rows sample the teacher itself (EDM: Heun,
35 NFE; TrigFlow / flow: 50 steps).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_objectives import _save, data_floor, quality, table, train  # noqa: E402

from cmjax import create_train_state  # noqa: E402
from cmjax.config import TrainHParams, load_config  # noqa: E402
from cmjax.core import parallel  # noqa: E402
from cmjax.workdir.frozen import load_frozen  # noqa: E402
from cmjax.workdir.init_from import apply_init_from  # noqa: E402

# row -> (objective, its teacher's objective or None, objective overrides, init from teacher)
CD_ROWS = {
    "cd mu=0 heun": ("cd", "edm", {}, False),
    "cd mu=0.95 heun": ("cd", "edm", dict(target_ema=0.95), False),
    "cd mu=0 sde eta=1": ("cd", "edm", dict(teacher_solver="sde", eta=1.0), False),
    "cd mu=0 sde eta=0.5": ("cd", "edm", dict(teacher_solver="sde", eta=0.5), False),
    "edm->ect": ("ect", None, {}, True),
}
SCD_ROWS = {
    "scd, trigflow teacher": ("scd", "trigflow", {}, False),
    "scd, flow teacher": ("scd", "flow", {}, False),
    "trigflow->scd": ("scd", "trigflow", {}, True),
}


def student(make_config, objective, teacher_dir, overrides, init, steps, first_step):
    """A student run of ``steps`` steps reading ``teacher_dir`` (teacher and/or init_from)."""
    config = make_config(objective, steps)
    config.objective.update(overrides)
    if objective in ("cd", "scd"):
        config.objective.teacher = teacher_dir
    if init:
        config.init_from = teacher_dir
    hp = TrainHParams.from_config(config)
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    state = create_train_state(hp, jax.random.key(hp.seed), frozen=load_frozen(hp, mesh))
    if init:
        state = apply_init_from(hp, state, mesh)
    return hp, train(hp, state, first_step=first_step)


def run(make_config, teacher_steps: int, steps: int, n: int, workdir: Path, only=None):
    teachers, cd_results, scd_results = {}, {}, {}

    def teacher(kind):
        if kind not in teachers:
            t0 = time.perf_counter()
            cfg = make_config(kind, teacher_steps)
            hp = TrainHParams.from_config(cfg)
            state = train(hp)
            path = _save(workdir / kind, state, cfg, teacher_steps)
            seconds = time.perf_counter() - t0
            teachers[kind] = (path, hp, state, seconds)
            print(f"  teacher {kind}: {quality(hp, state, n)} ({seconds:.0f} s)", flush=True)
        return teachers[kind]

    for rows, results in ((CD_ROWS, cd_results), (SCD_ROWS, scd_results)):
        for row, (objective, kind, overrides, init) in rows.items():
            if only and row not in only:
                continue
            path, _, _, teacher_s = teacher(kind or "edm")
            t0 = time.perf_counter()
            hp, state = student(make_config, objective, path, overrides, init, steps, teacher_steps)
            seconds = time.perf_counter() - t0
            results[row] = {**quality(hp, state, n), "train s": seconds + teacher_s}
            print(f"  {row:22s} {results[row]}", flush=True)
    if only:
        return cd_results, scd_results
    t0 = time.perf_counter()
    hp = TrainHParams.from_config(make_config("ict", teacher_steps + steps))
    state = train(hp)
    cd_results[f"ict ({teacher_steps + steps} steps)"] = {
        **quality(hp, state, n),
        "train s": time.perf_counter() - t0,
    }
    for kind, results in (("edm", cd_results), ("trigflow", scd_results), ("flow", scd_results)):
        _, hp, state, seconds = teacher(kind)
        q = quality(hp, state, n)
        results[f"{kind} teacher"] = {"teacher": next(iter(q.values())), "train s": seconds}
    return cd_results, scd_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher-steps", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000, help="toy student steps")
    parser.add_argument("--toys", default="two_moons,gaussian_mixture")
    parser.add_argument("--digits-teacher-steps", type=int, default=600)
    parser.add_argument("--digits-steps", type=int, default=600, help="0: skip the digits")
    parser.add_argument(
        "--rows",
        default="",
        help="only these rows (comma-separated), without the ict and "
        "teacher rows; default: every row",
    )
    args = parser.parse_args()
    only = set(filter(None, args.rows.split(",")))
    unknown = sorted(only - set(CD_ROWS) - set(SCD_ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join([*CD_ROWS, *SCD_ROWS])}")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = [
            (f"toy2d:{toy}", f"toy2d:{toy},{{}}", args.teacher_steps, args.steps, 4000)
            for toy in filter(None, args.toys.split(","))
        ]
        if args.digits_steps:
            sets.append(
                ("digits", "default:{}", args.digits_teacher_steps, args.digits_steps, 1000)
            )
        for title, spec, teacher_steps, steps, n in sets:

            def make_config(objective, total, spec=spec):
                config = load_config(spec.format(objective))
                config.training.total_steps = total
                return config

            print(f"{title}:", flush=True)
            cd, scd = run(make_config, teacher_steps, steps, n, Path(tmp) / title, only)
            floor = data_floor(TrainHParams.from_config(make_config("ict", 1)), n)
            head = f"{title}: teachers {teacher_steps} steps, students"
            out.append(table(f"{head} (CD / ECT from EDM; iCT: both budgets)", steps, cd, floor))
            out.append(table(f"{head} (sCD)", steps, scd, floor))
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
