"""The signals that end a long operation (apply, tune), and the guard that handles them.

SIGHUP is what a dropped SSH session sends, SIGTERM what systemd and `kill` send, SIGINT Ctrl-C:
all three are handled alike. Handlers can only be installed in the main thread; elsewhere (the
TUI's workers) the guard does nothing, and the previous handlers come back when it ends.
"""

from __future__ import annotations

import abc
import signal
import threading
from typing import Any, Final, Self

INTERRUPTING: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SignalGuard(abc.ABC):
    """Routes the interrupting signals to `_handle` for the `with` block. `received` is the
    first signal's name; what a signal does is the subclass's `_handle`."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for signum in INTERRUPTING:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @abc.abstractmethod
    def _handle(self, signum: int, _frame: object) -> None:
        """What the operation does on an interrupting signal (runs in the main thread)."""
