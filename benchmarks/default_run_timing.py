"""The README's main command before and after issue 17, timed back to back.

    python benchmarks/default_run_timing.py [--root DIR] [--runs old,new] [--set KEY=VALUE ...]

Runs ``cmjax-train --config=configs/default.py`` twice as CLI subprocesses in fresh work
directories under ``--root`` (default: a new temporary directory): ``old``, the default as
shipped before issue 17 (written out below as ``--config`` overrides), then ``new``, the
default as it is now (no overrides). Prints one table row per run: wall time, CPU time (user
+ sys of the process and its children, from ``os.wait4``), images/s (steps x batch / the
wall time from "train step compiled" to the last step's log line) and the final digits FD
proxy (not FID; lower is better, data floor 0.39) of 1,000 1- and 2-step samples from the
run's own ``eval at step N`` line. Wall time and images/s only mean something on an idle
machine; CPU seconds are steadier on a shared one, not exact (XLA's threads spin while a core
is free, so a quieter machine books more of them). Each run's log is ``<root>/<run>.log``.
``--old-code DIR`` runs ``old`` with an older checkout's code (the
loop as it was too), not this one's. ``--set`` adds a ``--config`` override to every run (a
smoke test: ``--set training.total_steps=20 --set eval.every_steps=20``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# configs/default.py before issue 17: every key the retune changed, at its old value.
OLD_DEFAULT = {
    "model.channels": "32",
    "training.batch_size": "128",
    "training.total_steps": "3000",
    "training.ema_rates": "(0.999,)",
    "optim.learning_rate": "0.001",
    "training.sample_every": "1000",
    "checkpoint.every_steps": "1000",
    "eval.every_steps": "3000",
}
RUNS = {"old": OLD_DEFAULT, "new": {}}

_CLOCK = r"^(\d\d:\d\d:\d\d) "


def _seconds(clock: str) -> int:
    h, m, s = map(int, clock.split(":"))
    return 3600 * h + 60 * m + s


def parse_log(text: str) -> dict[str, float]:
    """Steps, batch-free timings and the final proxies from a cmjax-train log."""
    compiled = re.search(_CLOCK + r"train step compiled", text, re.M)
    last = re.findall(_CLOCK + r"step (\d+)/(\d+) ", text, re.M)
    evals = re.findall(
        r"eval at step (\d+): digits_fd_proxy_1step ([\d.]+)\s+digits_fd_proxy_2step ([\d.]+)",
        text,
    )
    if not (compiled and last and evals):
        raise SystemExit("the run's log lacks the compile, step or eval lines; see the log")
    clock, steps, total = last[-1]
    train_wall = (_seconds(clock) - _seconds(compiled.group(1))) % 86400
    return dict(
        steps=int(steps),
        total=int(total),
        train_wall=float(train_wall),
        proxy_1step=float(evals[-1][1]),
        proxy_2step=float(evals[-1][2]),
    )


def run_one(
    name: str, overrides: dict[str, str], root: Path, code: Path = ROOT
) -> dict[str, float]:
    """Train one default run as a subprocess with the cmjax checkout ``code``; its timings
    and proxies."""
    workdir = root / name
    cmd = [
        sys.executable,
        "-m",
        _train_module(code),
        "--config=configs/default.py",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]
    log_path = root / f"{name}.log"
    print(f"[{name}] {' '.join(cmd[2:])}  (log: {log_path})", file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONPATH=str(code))
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"[{name}] failed; see {log_path}")
    result = parse_log(log_path.read_text())
    batch = int(overrides.get("training.batch_size", _new_default_batch()))
    result.update(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        images_per_sec=result["steps"] * batch / max(result["train_wall"], 1.0),
        batch=batch,
    )
    return result


def _train_module(code: Path) -> str:
    """``cmjax-train``'s module in the checkout ``code`` (``cmjax.main`` before the package
    was split into subpackages)."""
    return "cmjax.cli.train" if (code / "cmjax" / "cli" / "train.py").is_file() else "cmjax.main"


def _new_default_batch() -> int:
    sys.path.insert(0, str(ROOT))
    from cmjax.config import load_config

    return int(load_config("default").training.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="where the work dirs go")
    parser.add_argument("--runs", default="old,new", help="comma-separated: old, new")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
    parser.add_argument(
        "--old-code",
        type=Path,
        default=ROOT,
        help="a checkout of cmjax before issue 17 (e.g. `git worktree add --detach DIR 01164ff`)"
        " to run `old` with the code it shipped with; default: this checkout",
    )
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="cmjax_default_timing_"))
    root.mkdir(parents=True, exist_ok=True)
    extra = dict(kv.split("=", 1) for kv in args.set)
    names = [n for n in args.runs.split(",") if n]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; choose from {sorted(RUNS)}")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{stamp}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    print("| run | steps | batch | wall | CPU s (user+sys) | images/s | proxy 1-step | 2-step |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        code = args.old_code if name == "old" else ROOT
        r = run_one(name, {**RUNS[name], **extra}, root, code.resolve())
        wall = f"{int(r['wall']) // 60} min {int(r['wall']) % 60:02d} s"
        print(
            f"| {name} | {r['steps']} | {r['batch']} | {wall} | {r['cpu']:.0f} | "
            f"{r['images_per_sec']:.0f} | {r['proxy_1step']:.2f} | {r['proxy_2step']:.2f} |",
            flush=True,
        )
    print(f"load average {os.getloadavg()[0]:.2f} at the end; logs in {root}")


if __name__ == "__main__":
    main()
