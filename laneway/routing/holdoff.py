"""Lanes that asked to be left alone for a moment, and when a request waits for them.

A backend's signal says until when it is not to be called (``Signals.held_until``): its quota is
used up until the reset (a 429, or rate-limit headers at zero), or it said it is unavailable until
a Retry-After (a 503 or 529 that said so). Its lanes are *held* until then: the router does not
try them. When no lane a request may still use is ready, and the first held one is back within
what is left of ``routing.retry_wait`` for this request and before its deadline, with attempts
left, the request waits for it (on the injected clock, cancellably: a client that leaves ends the
wait) instead of failing. Otherwise it is refused as the first lane back says: 429 if its quota is
used up, 503 if it is unavailable, with Retry-After either way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from laneway.clock import Clock
from laneway.config.schema import RoutingConfig
from laneway.errors import LanewayError, NoLaneAvailable, QuotaExhausted
from laneway.routing.request import Dispatch
from laneway.routing.resolve import Candidate
from laneway.signals.store import Signals


@dataclass(frozen=True, slots=True)
class Hold:
    until: float  # wall clock
    quota: bool  # its quota is used up (else: it said it is unavailable)


class Holdoff:
    def __init__(self, signals: Signals, clock: Clock, settings: RoutingConfig) -> None:
        self.signals = signals
        self.clock = clock
        self.settings = settings

    def ready(self, found: tuple[Candidate, ...], request: Dispatch) -> tuple[Candidate, ...]:
        """The candidates worth trying now: not held, and not failed this request already."""
        now, held_until, failed = self.clock.now(), self.signals.held_until, request.failed
        return tuple(c for c in found if held_until(c.lane.backend) <= now and c.lane.id not in failed)

    def wait(self, found: tuple[Candidate, ...], request: Dispatch) -> float | None:
        """Seconds to wait for the first held candidate to be back, if the request may wait that
        long; None if it may not (or nothing is held)."""
        first = self._first(found, request)
        if first is None or request.spent(self.clock.monotonic()):
            return None
        wait = first.until - self.clock.now()
        left = min(self.settings.retry_wait - request.waited, request.deadline - self.clock.monotonic())
        return wait if wait <= left else None

    def refusal(self, found: tuple[Candidate, ...], request: Dispatch) -> LanewayError | None:
        """Why no lane can take the request now, when that is because they are held (None: they
        are not)."""
        first = self._first(found, request)
        if first is None:
            return None
        wait = max(1.0, first.until - self.clock.now())
        requested = request.requested
        if first.quota:
            return QuotaExhausted(
                f"Every lane that serves '{requested}' has used up its quota; retry in {wait:.0f}s",
                retry_after=wait,
            )
        return NoLaneAvailable(
            f"Every lane that serves '{requested}' is unavailable for now (its backend said so); "
            f"retry in {wait:.0f}s",
            retry_after=wait,
        )

    def _first(self, found: Iterable[Candidate], request: Dispatch) -> Hold | None:
        """The hold that ends first among the candidates not failed this request."""
        now = self.clock.now()
        holds = [
            hold
            for c in found
            if c.lane.id not in request.failed and (hold := self._hold(c.lane.backend, now)) is not None
        ]
        return min(holds, key=lambda h: h.until) if holds else None

    def _hold(self, backend: str, now: float) -> Hold | None:
        sig = self.signals.get(backend)
        if sig is None or sig.held_until() <= now:
            return None
        exhausted = sig.exhausted_until or 0.0
        return Hold(sig.held_until(), quota=exhausted >= (sig.unavailable_until or 0.0))
