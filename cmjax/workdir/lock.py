"""One run per work directory: an exclusive lock held by process 0 for the whole run.

The lock is ``fcntl.flock`` on ``<workdir>/cmjax.lock``: the kernel drops it when the holder
exits or is killed, so a stale lock from a SIGKILLed run never blocks the next one. The file
records the holder (host, pid, start time) so a refused run can name it. Where the
filesystem has no flock, the record alone decides: a holder on this host whose pid is gone
is stale and taken over.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

from cmjax.errors import WorkdirLockedError

log = logging.getLogger("cmjax")
LOCK_NAME = "cmjax.lock"


def _describe(holder: dict) -> str:
    if not holder:
        return "an unknown process"
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, "
        f"started {holder.get('started', '?')}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """``with WorkdirLock(workdir):`` holds the lock; ``acquire`` raises WorkdirLockedError."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self._fd: int | None = None

    def _read(self, fd: int) -> dict:
        try:
            text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            return json.loads(text) if text else {}
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict) -> WorkdirLockedError:
        return WorkdirLockedError(
            f"work directory {self.workdir} is in use by another cmjax-train run "
            f"({_describe(holder)}); wait for it to finish or stop it, or pass another --workdir"
        )

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._refuse(self._read(fd)) from None
            except OSError as e:  # no flock here (some network filesystems): use the record
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                holder = self._read(fd)
                if holder and holder.get("pid") != os.getpid():
                    same_host = holder.get("host") == socket.gethostname()
                    if not same_host or _pid_alive(int(holder.get("pid", 0))):
                        raise self._refuse(holder) from None
            previous = self._read(fd)
            if previous:
                log.warning(
                    "took over the lock of %s, which is gone (killed or crashed)",
                    _describe(previous),
                )
            record = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Clear the record (a clean exit leaves no holder) and drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
