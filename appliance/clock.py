"""Time, as every loop in the appliance reads it: one protocol, the system's clock and a test's.

Apply's health wait blocks a thread; the monitor sleeps on an event loop. Both read the same two
hands (`monotonic` for intervals, `wall` for what a user sees) and differ only in how they wait,
so the protocols share `Clock` and tests drive either with a clock whose `sleep` only moves the
hands.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["AsyncClock", "AsyncSystemClock", "BlockingClock", "Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class BlockingClock(Clock, Protocol):
    """A clock a thread waits on (apply's health checks)."""

    def sleep(self, seconds: float) -> None: ...


class AsyncClock(Clock, Protocol):
    """A clock an event loop waits on (the monitor)."""

    async def sleep(self, seconds: float) -> None: ...


class _SystemHands:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class SystemClock(_SystemHands):
    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class AsyncSystemClock(_SystemHands):
    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """An `AsyncClock` for tests: `sleep` only moves the hands (and yields to the loop)."""

    def __init__(
        self,
        start: float = 1_000.0,
        wall: float = 1_767_225_600.0,
        *,
        hold_after: int | None = None,
    ) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._sleeps = 0
        self._hold_after = hold_after  # then `sleep` never returns: a monitor frozen mid-run

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Time passes without a `sleep` (a tick that took long, a test stepping ahead)."""
        self._now += seconds

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        self._sleeps += 1
        if self._hold_after is not None and self._sleeps >= self._hold_after:
            await asyncio.Event().wait()
        self._now += max(0.0, seconds)
        await asyncio.sleep(0)
