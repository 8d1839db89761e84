"""``cmjax-train --config=configs/x.py:variant --workdir=DIR [--config.a.b=value ...]``.

Errors the user can fix end the process with one line on stderr and exit code 2; the
traceback goes to ``DIR/error.log`` (``--verbose``: to stderr).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence

from absl import flags
from ml_collections import config_flags

from cmjax.cli.runner import Command


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
        "workdir", None, "Directory for checkpoints, logs and samples.", flag_values=fv
    )


@contextlib.contextmanager
def progress_on_stdout() -> Iterator[logging.Logger]:
    """cmjax's INFO lines (set-up, progress, evaluations) on stdout, timestamped, for the
    duration of the command (then the logger is as it was: in-process calls leave no trace)."""
    logger = logging.getLogger("cmjax")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    before = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]


def main(fv: flags.FlagValues) -> None:
    config = fv.config
    with progress_on_stdout() as log:
        log.info("cmjax-train: setting up the run in %s", fv.workdir)
        from cmjax.training.loop import train_and_evaluate  # imports JAX: seconds; say so

        train_and_evaluate(config, fv.workdir)


COMMAND = Command(
    "cmjax-train",
    "Train (or resume) a consistency model; the newest checkpoint in --workdir resumes.",
    define,
    main,
    required=("config", "workdir"),
    workdir_flag="workdir",
    notes=(
        "Config keys: --config.KEY=VALUE sets any key of the config file, e.g.\n"
        "  --config.training.total_steps=500 --config.optim.learning_rate=2e-4\n"
        "List a config's keys: python -c \"from cmjax.config import load_config; "
        "print(load_config('configs/default.py'))\""
    ),
)
run = COMMAND.run

if __name__ == "__main__":
    run()
