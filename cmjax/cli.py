"""The entry-point wrapper of cmjax-train, cmjax-sample and cmjax-fid.

Parses flags, quiets third-party INFO logs, and turns every exception into one line on stderr
(what is wrong, what to do) and a non-zero exit: 2 for errors the user can fix, 1 for
anything else (a bug). The traceback goes to ``<workdir>/error.log`` (or a temp file when
there is no usable workdir), or to stderr with ``--verbose``.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from absl import flags
from absl import logging as absl_logging

from cmjax.user_errors import UserError, environment_oserror, one_line, user_error_types

if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "Print full tracebacks on errors.")

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


def quiet_third_party_logs() -> None:
    """orbax, clu and absl log every save/restore at INFO; keep WARNING and above."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    absl_logging.set_stderrthreshold(absl_logging.WARNING)
    for name in ("absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.ERROR if name != "absl" else logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def flag_error_message(e: BaseException) -> str:
    """A one-line message for a flag-parsing error (unknown --config.x keys, bad config file)."""
    text = str(e)
    unknown = re.search(r"Unknown command line flag '(config\.[\w.]+)'", text)
    if unknown:
        key = unknown.group(1)
        return (
            f"unknown config key {key}: check the spelling against the config file "
            "(python -c 'from cmjax.config_loading import load_config; "
            'print(load_config("CONFIG"))\' lists its keys)'
        )
    if "No such file or directory" in text or "Failed loading config file" in text:
        path = re.search(r"Attempted \[[^\]]*\]:\s*(\S+)", text)
        name = path.group(1) if path else "given with --config"
        return f"config file {name} not found; pass a path such as configs/default.py[:variant]"
    if "Error whilst parsing config file" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return f"the config file failed to load: {lines[-1]}"
    return one_line(e)


def _log_path(workdir: str | None, prog: str) -> Path:
    if workdir:
        path = Path(workdir)
        if path.is_dir() and os.access(path, os.W_OK):
            return path / "error.log"
    return Path(tempfile.gettempdir()) / f"{prog}-error-{os.getpid()}.log"


def _report(e: BaseException, prog: str, workdir: str | None, verbose: bool) -> int:
    user = isinstance(e, user_error_types())
    env = None if user else environment_oserror(e)
    if user:
        message = one_line(e)
    elif env is not None:
        where = f" {env.filename}" if env.filename else ""
        message = (
            f"cannot use{where}: {env.strerror or env}; check the path, its permissions and the "
            "free disk space"
        )
    else:
        message = f"internal error ({type(e).__name__}: {one_line(e, 300)}); please report it"
    trace = "".join(traceback.format_exception(e))
    if verbose:
        sys.stderr.write(trace)
        where = ""
    else:
        path = _log_path(workdir, prog)
        try:
            with path.open("a") as f:
                f.write(f"--- {datetime.datetime.now().isoformat()} {' '.join(sys.argv)}\n{trace}")
            where = f" (traceback in {path})"
        except OSError:
            where = " (rerun with --verbose for the traceback)"
    sys.stderr.write(f"{prog}: error: {message}{where}\n")
    sys.stderr.flush()
    return EXIT_USER_ERROR if (user or env is not None) else EXIT_INTERNAL_ERROR


def run_cli(
    prog: str,
    main: Callable[[list[str]], None],
    workdir: Callable[[], str | None] = lambda: None,
    argv: list[str] | None = None,
) -> int:
    """Parse flags and call ``main(argv)``; returns the process exit code (0 on success)."""
    quiet_third_party_logs()
    argv = list(sys.argv if argv is None else argv)
    verbose = "--verbose" in argv
    try:
        try:
            rest = flags.FLAGS(argv)
        except flags.Error as e:
            raise UserError(flag_error_message(e)) from e
        except OSError as e:  # ml_collections' config file loader
            raise UserError(flag_error_message(e)) from e
        verbose = flags.FLAGS.verbose
        if len(rest) > 1:
            raise UserError(f"unexpected arguments {rest[1:]}; every option is a --flag=value")
        main(rest)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 (the one place every error is reported)
        try:
            wd = workdir()
        except Exception:  # noqa: BLE001
            wd = None
        return _report(e, prog, wd, verbose)
    return 0


def run_and_exit(prog: str, main, workdir=lambda: None) -> None:
    """Console-script helper: ``sys.exit(run_cli(...))``."""
    sys.exit(run_cli(prog, main, workdir))
