"""Runtime signals shared between replicas: when what one replica observed changes what routing
does with a backend (its quota used up, or reset early; it said it is unavailable until a time, or
answered again; its last call failed, or succeeded), every other replica is told at once and
merges it into its own signal, so its router holds the backend (``routing.holdoff``) without a
call of its own.

Only such changes are sent (``Signals.on_change``: never one per request), and a burst is
coalesced: a replica sends at most one event every ``EVENT_GAP`` seconds, and the backends that
changed meanwhile go out together in the next, each with its facts as they are then (a backend
whose calls fail every other time costs its replica 20 events a second at most, not one a
call). Receivers merge by the observations' own times (``BackendSignal.merge``), so an event
that arrives late or twice undoes nothing newer.

Pub/sub keeps nothing for a replica that was away. The signals are also persisted in Redis
(``Signals.flush``, merging what is there first) and read at start; each time the bus (re)starts
listening, a replica writes what it learnt meanwhile, reads what the others wrote, and tells them
what it knows: whichever of two replicas comes back last, both end up with the other's facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from laneway.clock import Clock
from laneway.cluster.bus import Bus
from laneway.signals.state import BackendSignal
from laneway.signals.store import Signals

log = logging.getLogger("laneway.cluster")

SIGNALS_CHANGED = "signals.changed"  # payload: {"signals": [BackendSignal.shared_record(), ...]}
EVENT_GAP = 0.05  # seconds between two events of one replica, at least (well within "1 s")


class SharedSignals:
    def __init__(self, signals: Signals, bus: Bus, clock: Clock) -> None:
        self.signals = signals
        self.bus = bus
        self.clock = clock
        self._pending: set[str] = set()  # backends that changed since the last event went out
        self._sending: asyncio.Task[None] | None = None
        self.sent = 0  # events published (each may carry several backends)

    def start(self) -> None:
        """Tell and listen from now on."""
        self.signals.merge_persisted = True
        self.signals.on_change = self.changed
        self.bus.on(SIGNALS_CHANGED, self._told)
        self.bus.on_listening(self._caught_up)

    def changed(self, backend: str) -> None:
        """Called on the request path (no I/O): the event goes out from a task of its own, which
        takes along whatever else changes while it is being sent."""
        self._pending.add(backend)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send(), name="signals-changed")

    async def _send(self) -> None:
        while self._pending:
            backends, self._pending = sorted(self._pending), set()
            await self._publish(backends)
            await self.clock.sleep(EVENT_GAP)  # what changes meanwhile waits, and goes out together

    async def _publish(self, backends: list[str]) -> None:
        records = [sig.shared_record() for backend in backends if (sig := self.signals.get(backend))]
        if records:
            await self.bus.publish(SIGNALS_CHANGED, {"signals": records})
            self.sent += 1

    async def _told(self, payload: dict[str, Any]) -> None:
        records = payload.get("signals")
        for record in records if isinstance(records, list) else ():
            try:
                other = BackendSignal.from_record(record, self.signals.settings.window)
            except (KeyError, TypeError, ValueError, AttributeError):
                log.warning("ignored an unreadable signal from another replica")
                continue
            self.signals.merge(other)

    async def _caught_up(self) -> None:
        """Listening (again): events may have been missed meanwhile, in both directions."""
        await self.signals.flush()
        await self.signals.load()
        await self._publish(self.signals.backends())

    async def aclose(self) -> None:
        if self._sending is not None:
            self._sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sending
