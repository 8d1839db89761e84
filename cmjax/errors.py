"""Every error a user can cause, in one place, under one base class.

Each subclasses :class:`UserError`; its message is one line that says what is wrong and what
to do. The CLI runner (``cmjax.cli.runner``) catches ``UserError`` once, prints that line on
stderr and exits with code 2; anything else is a bug (exit 1, "please report it"). Library
code raises the most specific class; callers that only want "the user's mistake" catch
``UserError``. This module imports nothing of cmjax, so every layer can raise these.
"""

from __future__ import annotations

import errno
from pathlib import Path


class UserError(Exception):
    """Something the user can fix; the message is one line saying what to do."""


class ConfigError(UserError, ValueError):
    """A config key is unknown, missing or has a bad value."""


class DataError(UserError, ValueError):
    """Data is missing or malformed; the message says which file and what to do."""


class CheckpointError(UserError):
    """A checkpoint cannot be restored; the message names it and says what to do."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's bytes are truncated, unverifiable or do not match its recorded digest."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"checkpoint {path} {problem}")
        self.step = Path(path).name
        self.problem = problem


class WorkdirLockedError(UserError):
    """Another live run holds the work directory."""


class DistributedError(UserError, RuntimeError):
    """Multi-process initialization failed; the message says what to set."""


class NonFiniteError(UserError, FloatingPointError):
    """The loss or gradients became NaN/inf; the message names the step and the checkpoint."""


class StatsError(UserError, ValueError):
    """FID reference statistics are missing or malformed."""


class WeightsError(UserError, ValueError):
    """A weight file (Inception, a feature network) is missing or does not fit its network."""


class CheckpointImportError(UserError, ValueError):
    """A published checkpoint cannot be imported; the message says which parameter and why."""


class UnsafePickleError(CheckpointImportError):
    """A pickle asks to run code (a callable outside the small allowed set): refused."""


class CombineError(UserError, ValueError):
    """An LCSC combination cannot be set up; the message says what to change."""


class PrepareError(UserError):
    """Bad input or output of ``cmjax-prepare-imagenet``."""


# OSErrors that come from the user's environment (paths, permissions, disk), not from bugs.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOENT,
}


def environment_oserror(e: BaseException | None) -> OSError | None:
    """The OSError (disk full, read-only, not a directory, ...) behind ``e``, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def one_line(e: BaseException, limit: int = 1500) -> str:
    """The message of ``e`` on one line (whitespace runs collapsed)."""
    text = " ".join(str(e).split())
    return text[:limit] if text else type(e).__name__
