"""``cmjax-train --config=configs/x.py:variant --workdir=DIR [--config.a.b=value ...]``.

Errors the user can fix end the process with one line on stderr and exit code 2; the
traceback goes to ``DIR/error.log`` (``--verbose``: to stderr).
"""

from __future__ import annotations

import logging
import sys

from absl import flags
from ml_collections import config_flags

from cmjax.cli import flag_error_message, run_and_exit
from cmjax.user_errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config: configs/<name>.py[:variant].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    try:
        config = _CONFIG.value
        config.keys()  # a file that failed to load raises only when first used
    except (OSError, AttributeError, KeyError, ValueError, TypeError) as e:
        raise UserError(flag_error_message(e, sys.argv)) from e
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("cmjax")
    if not logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.info("cmjax-train: setting up the run in %s", _WORKDIR.value)
    from cmjax.train import train_and_evaluate  # imports JAX: seconds; say something first

    train_and_evaluate(config, _WORKDIR.value)


def run() -> None:
    """Console-script entry point."""
    run_and_exit("cmjax-train", main, lambda: _WORKDIR.value)


if __name__ == "__main__":
    run()
