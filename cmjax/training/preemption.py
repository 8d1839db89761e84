"""SIGTERM and Ctrl-C during training: a flag the loop polls, agreed by every process."""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Turns SIGTERM and the first Ctrl-C (SIGINT) into a flag the training loop polls (all
    processes agree on it). A second Ctrl-C aborts at once (KeyboardInterrupt)."""

    def __init__(self, on_interrupt=None):
        self._flag = threading.Event()
        self._previous: dict[int, Any] = {}
        self._on_interrupt = on_interrupt
        self.interrupted = False  # the flag came from Ctrl-C (not SIGTERM)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self._flag.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self._flag.set()
        if signum == signal.SIGINT:
            self.interrupted = True
            if self._on_interrupt is not None:
                self._on_interrupt()

    def requested(self) -> bool:
        local = self._flag.is_set()
        if jax.process_count() == 1:
            return local
        return bool(multihost_utils.process_allgather(np.int32(local)).max())

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
