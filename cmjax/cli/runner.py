"""The one runner behind every entry point (cmjax-train, -sample, -fid, -combine, -import,
-prepare-imagenet, -demo).

Each entry point is a :class:`Command`: its own flags, defined on a private
``absl.flags.FlagValues`` (so entry points never collide, and ``--help`` lists exactly those
flags with their help text and defaults), and a ``main(flags)``. The runner parses the command
line, quiets third-party INFO logs, and turns every exception into one line on stderr (what
is wrong, what to do) and an exit code: 2 for errors the user can fix (``cmjax.errors``
classes and environment OSErrors: disk full, permissions, missing paths), 1 for anything else
(a bug), 130 for Ctrl-C. The traceback goes to ``<workdir>/error.log`` (or a temp file when
there is no usable workdir), or to stderr with ``--verbose``.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import re
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

# Before TensorFlow (imported by clu) loads: its C++ start-up notices are not for our users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from cmjax.errors import UserError, environment_oserror, one_line  # noqa: E402

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-help")


def quiet_third_party_logs() -> None:
    """orbax, clu and TFDS log every save/restore at INFO and their own housekeeping at
    WARNING (e.g. 'Variant folder ... has no dataset_info.json' before our own one-line
    message); the CLIs show only their errors. cmjax's own log is unaffected."""
    absl_logging.set_verbosity(absl_logging.ERROR)
    absl_logging.set_stderrthreshold(absl_logging.ERROR)
    for name in ("absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclasses.dataclass(frozen=True)
class Command:
    """One entry point.

    ``define(fv, argv)`` defines the command's flags on ``fv`` (``argv`` is the command line,
    for ml_collections' ``--config.KEY=value`` overrides); ``main(fv)`` runs it with the
    parsed flags. ``required``: flags that must be given. ``workdir_flag``: the flag naming the
    directory that receives ``error.log``. ``notes``: extra lines for ``--help``.
    """

    prog: str
    summary: str
    define: Callable[[flags.FlagValues, Sequence[str]], None]
    main: Callable[[flags.FlagValues], None]
    required: tuple[str, ...] = ()
    workdir_flag: str | None = None
    notes: str = ""

    def __call__(self, argv: Sequence[str] | None = None) -> int:
        """Run with ``argv`` (default ``sys.argv``; ``argv[0]`` is the program name)."""
        return run_cli(self, list(sys.argv if argv is None else argv))

    def run(self) -> None:
        """Console-script entry point."""
        sys.exit(self())


def help_text(command: Command, fv: flags.FlagValues) -> str:
    """``--help``: the command's own flags with their help text and defaults."""
    lines = [f"usage: {command.prog} --flag=value ...", "", command.summary, "", "flags:"]
    for name in sorted(fv):
        flag = fv[name]
        if name in ("flagfile", "undefok") or flag.name != name or "." in name:
            continue  # absl's specials, short aliases, --config.KEY overrides
        if name in command.required:
            extra = "required"
        elif flag.default is None or flag.default == "":
            extra = "optional"
        else:
            extra = f"default: {flag.default_as_str or flag.default}"
        if flag.flag_type() == "bool":
            extra = f"default: {str(bool(flag.default)).lower()}; --no{name} to turn off"
        lines.append(f"  --{name}  ({extra})")
        lines += textwrap.wrap(
            flag.help or "", 92, initial_indent="      ", subsequent_indent="      "
        )
    if command.notes:
        lines += ["", *command.notes.strip().splitlines()]
    return "\n".join(lines) + "\n"


def flag_error_message(e: BaseException, argv: Sequence[str], prog: str = "cmjax") -> str:
    """A one-line message for a flag-parsing error (unknown flags or --config.x keys, a bad
    config file or value)."""
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
    unknown = re.search(r"Unknown command line flag '([\w.]+)'", text)
    if unknown and unknown.group(1).startswith("config."):
        return (
            f"unknown config key {unknown.group(1)}: check the spelling against the config file "
            f"({prog} --help shows how to list its keys)"
        )
    if unknown:
        return f"unknown flag --{unknown.group(1)}; {prog} --help lists the flags"
    if "No such file or directory" in text or "Failed loading config file" in text:
        path = re.search(r"Attempted \[[^\]]*\]:\s*(\S+)", text)
        name = path.group(1) if path else "given with --config"
        return f"config file {name} not found; pass a path such as configs/default.py[:variant]"
    if "Error whilst parsing config file" in text or "Error loading config file" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return f"the config file failed to load: {lines[-1]}"
    illegal = re.search(r"Illegal value for flag --?([\w.]+)|flag --([\w.]+)=(\S*): (.+)", text)
    if illegal:
        return f"bad value for a flag: {one_line(e, 300)}; {prog} --help lists the flags"
    return one_line(e)


def _log_path(workdir: str | None, prog: str) -> Path:
    if workdir:
        path = Path(workdir)
        if path.is_dir() and os.access(path, os.W_OK):
            return path / "error.log"
    return Path(tempfile.gettempdir()) / f"{prog}-error-{os.getpid()}.log"


def report(e: BaseException, prog: str, workdir: str | None, verbose: bool) -> int:
    """Print the one line for ``e`` (traceback to the log or stderr); the exit code."""
    user = isinstance(e, UserError)
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


def _parse(command: Command, argv: list[str]) -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_bool(
        "verbose", False, "Print full tracebacks on errors (else: to error.log).", flag_values=fv
    )
    try:
        command.define(fv, argv)
        rest = fv(argv)
        for name in fv:  # a config file that failed to load raises only when first used
            value = fv[name].value
            if hasattr(value, "keys"):
                value.keys()
    except flags.Error as e:
        raise UserError(flag_error_message(e, argv, command.prog)) from e
    except (OSError, AttributeError, KeyError, ValueError, TypeError, SyntaxError) as e:
        raise UserError(flag_error_message(e, argv, command.prog)) from e  # a config file
    if len(rest) > 1:
        raise UserError(
            f"unexpected arguments {rest[1:]}; every option is a --flag=value "
            f"({command.prog} --help lists them)"
        )
    for name in command.required:
        if fv[name].value in (None, "", []):
            raise UserError(
                f"--{name} is required: {fv[name].help} ({command.prog} --help lists the flags)"
            )
    return fv


def run_cli(command: Command, argv: list[str]) -> int:
    """Parse ``argv`` and run ``command.main``; returns the process exit code."""
    quiet_third_party_logs()
    if any(a in HELP_FLAGS for a in argv[1:]):
        fv = flags.FlagValues()
        flags.DEFINE_bool("verbose", False, "Print full tracebacks on errors.", flag_values=fv)
        command.define(fv, [argv[0]])  # no overrides: the help of the flags themselves
        sys.stdout.write(help_text(command, fv))
        return EXIT_OK
    verbose = "--verbose" in argv
    fv = None
    try:
        fv = _parse(command, argv)
        verbose = fv.verbose
        command.main(fv)
    except KeyboardInterrupt as e:
        sys.stderr.write(f"{command.prog}: interrupted{'; ' + str(e) if str(e) else ''}\n")
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 (the one place every error is reported)
        workdir = None
        if fv is not None and command.workdir_flag:
            try:
                workdir = fv[command.workdir_flag].value
            except Exception:  # noqa: BLE001
                workdir = None
        return report(e, command.prog, workdir, verbose)
    return EXIT_OK
