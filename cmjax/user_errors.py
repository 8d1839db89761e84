"""The errors a user can cause and the one-line report every CLI gives for them.

``UserError`` (and the older families ``ConfigError``, ``DataError``, ``CheckpointError``,
``DistributedError``) carry a message that says what is wrong and what to do. The CLIs catch
them once, print that one line on stderr and exit with code 2; the traceback goes to a log
file (or to stderr with ``--verbose``).
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """Something the user can fix; the message is one line saying what to do."""


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


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception class whose message is written for the user."""
    from cmjax.checkpoint import CheckpointError
    from cmjax.data.sources import DataError
    from cmjax.evaluation.fid import StatsError
    from cmjax.evaluation.inception import WeightsError
    from cmjax.hparams import ConfigError
    from cmjax.parallel import DistributedError

    return (
        UserError,
        ConfigError,
        DataError,
        CheckpointError,
        DistributedError,
        StatsError,
        WeightsError,
    )


def environment_oserror(e: BaseException) -> OSError | None:
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
