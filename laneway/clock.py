"""Time, injected.

Everything with a TTL, a window, a heartbeat or a cooldown takes a ``Clock`` so tests can move
time by hand instead of sleeping. ``now()`` is wall time (for expiries that are persisted or
shown to people); ``monotonic()`` is for measuring durations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    async def sleep(self, seconds: float) -> None:
        """Wait for ``seconds`` of this clock's time."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to. ``sleep`` returns once ``advance`` has passed it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._mono + seconds, fut))
        try:
            await fut
        finally:
            self._sleepers = [(t, f) for (t, f) in self._sleepers if f is not fut]

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds
        for wake_at, fut in self._sleepers:
            if wake_at <= self._mono and not fut.done():
                fut.set_result(None)


async def within(clock: Clock, seconds: float, work: Awaitable[T]) -> T:
    """Run ``work`` for at most ``seconds`` of ``clock``'s time, else cancel it and raise
    ``TimeoutError``. Deadlines measured on the injected clock let a test with a ``ManualClock``
    show that many deadlines run side by side: one ``advance`` expires all of them."""
    task = asyncio.ensure_future(work)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # we were cancelled: take both down with us
        task.cancel()
        timer.cancel()
        await asyncio.wait((task, timer))
        raise
    timer.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))  # raises only if *we* are cancelled meanwhile
    if task.cancelled():
        raise TimeoutError(f"gave up after {seconds:g}s")
    return task.result()
