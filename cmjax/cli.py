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

# Before TensorFlow (imported by clu) loads: its C++ start-up notices are not for our users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from cmjax.user_errors import (  # noqa: E402
    UserError,
    environment_oserror,
    one_line,
    user_error_types,
)

if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "Print full tracebacks on errors.")

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


def quiet_third_party_logs() -> None:
    """orbax, clu and TFDS log every save/restore at INFO and their own housekeeping at
    WARNING (e.g. 'Variant folder ... has no dataset_info.json' before our own one-line
    message); the CLIs show only their errors. cmjax's own log is unaffected."""
    absl_logging.set_verbosity(absl_logging.ERROR)
    absl_logging.set_stderrthreshold(absl_logging.ERROR)
    for name in ("absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.ERROR)


def flag_error_message(e: BaseException, argv: list[str] = ()) -> str:
    """A one-line message for a flag-parsing error (unknown --config.x keys, bad config file)."""
    text = str(e)
    if isinstance(e, (AttributeError, KeyError)):  # a locked ConfigDict: unknown key
        keys = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--config.")]
        named = [k for k in keys if re.search(rf"\b{re.escape(k.rsplit('.', 1)[-1])}\b", text)]
        key = named[0] if named else "given with --config."
        hint = re.search(r'Did you mean "([^"]+)"', text)
        return (
            f"unknown config key {key}"
            + (f" (did you mean {hint.group(1)}?)" if hint else "")
            + ": check the spelling against the config file"
        )
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
            raise UserError(flag_error_message(e, argv)) from e
        except (OSError, AttributeError, KeyError, ValueError, TypeError) as e:
            raise UserError(flag_error_message(e, argv)) from e  # ml_collections' loader
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
