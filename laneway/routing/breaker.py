"""Per-lane circuit breakers.

``failures`` failures within ``window`` seconds open a lane's breaker: the lane leaves rotation
(its health becomes ``open``, weight 0). After ``cooldown`` it is half-open: routable at half
weight, one trial call at a time. A success closes it; a failure re-opens it, and a re-opened
breaker keeps the later of its old and new deadlines. Time is the injected clock's.

The state is mirrored into the inventory's lane health, so it shows in /admin/lanes, the CLI and
/metrics, and the resolver and ranking see it without asking. A lane denied by an auth cooldown
is the cooldown's: breakers never overwrite ``denied``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from laneway.clock import Clock
from laneway.config.schema import BreakerConfig
from laneway.inventory.lanes import HELD, Health
from laneway.inventory.store import Inventory

log = logging.getLogger("laneway.routing")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass
class Breaker:
    state: str = CLOSED
    failures: deque[float] = field(default_factory=deque)  # monotonic times within the window
    open_until: float = 0.0
    trial: bool = False  # a half-open trial call is in flight

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "state": self.state,
            "recent_failures": len(self.failures),
            "open_for": max(0.0, self.open_until - now) if self.state == OPEN else 0.0,
        }


class Breakers:
    def __init__(self, clock: Clock, config: BreakerConfig, inventory: Inventory) -> None:
        self.clock = clock
        self.config = config
        self.inventory = inventory
        self._breakers: dict[str, Breaker] = {}
        self._open: dict[str, float] = {}  # lane -> open_until, for the cheap half-open check

    def get(self, lane_id: str) -> Breaker | None:
        return self._breakers.get(lane_id)

    def advance(self) -> None:
        """Move open breakers whose cooldown passed to half-open. O(1) when none is open: it runs
        before every dispatch (and before every snapshot, so what is shown is current)."""
        if not self._open:
            return
        now = self.clock.monotonic()
        for lane_id, until in list(self._open.items()):
            if now >= until:
                del self._open[lane_id]
                breaker = self._breakers[lane_id]
                breaker.state, breaker.trial = HALF_OPEN, False
                self._mirror(lane_id, Health.HALF_OPEN)
                log.info("breaker half-open", extra={"lane": lane_id})

    def allow(self, lane_id: str) -> bool:
        """May this lane be tried now? A half-open lane admits one trial at a time."""
        breaker = self._breakers.get(lane_id)
        if breaker is None or breaker.state == CLOSED:
            return True
        if breaker.state == HALF_OPEN and not breaker.trial:
            breaker.trial = True
            return True
        return False

    def success(self, lane_id: str) -> None:
        """A call succeeded: a half-open (or open) breaker closes. A closed one keeps the failures
        of its window: "5 in 60 s" counts failures, so a lane failing one call in three still
        opens, successes in between or not."""
        breaker = self._breakers.get(lane_id)
        if breaker is None:
            return
        if breaker.state != CLOSED:
            log.info("breaker closed", extra={"lane": lane_id})
            self._mirror(lane_id, Health.HEALTHY)
            self._open.pop(lane_id, None)
            breaker.state, breaker.trial = CLOSED, False
            breaker.failures.clear()
        self._forget_old(breaker, self.clock.monotonic())
        if not breaker.failures:
            del self._breakers[lane_id]  # a closed breaker with no recent failures holds nothing

    def failure(self, lane_id: str) -> None:
        now = self.clock.monotonic()
        breaker = self._breakers.setdefault(lane_id, Breaker())
        if breaker.state != CLOSED:  # a failed trial, or a call that was in flight when it opened
            self._open_breaker(lane_id, breaker, now)
            return
        breaker.failures.append(now)
        self._forget_old(breaker, now)
        if breaker.state == CLOSED and len(breaker.failures) >= self.config.failures:
            self._open_breaker(lane_id, breaker, now)

    def release_trial(self, lane_id: str) -> None:
        """A half-open trial ended without a verdict (the caller left, or the pool refused it)."""
        breaker = self._breakers.get(lane_id)
        if breaker is not None:
            breaker.trial = False

    def _open_breaker(self, lane_id: str, breaker: Breaker, now: float) -> None:
        # Re-opening keeps the later deadline: a breaker is never shortened by a new failure.
        breaker.open_until = max(breaker.open_until, now + self.config.cooldown)
        breaker.state, breaker.trial = OPEN, False
        breaker.failures.clear()
        self._open[lane_id] = breaker.open_until
        self._mirror(lane_id, Health.OPEN)
        log.warning("breaker open", extra={"lane": lane_id, "for": breaker.open_until - now})

    def _mirror(self, lane_id: str, health: str) -> None:
        lane = self.inventory.get(lane_id)
        if lane is not None and lane.health not in HELD:
            self.inventory.set_health([lane_id], health)

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Every breaker that is not plainly closed and quiet, as of now: due half-opens done,
        failures older than the window forgotten, breakers of lanes gone from the inventory dropped."""
        self.advance()
        now = self.clock.monotonic()
        for lane_id, breaker in list(self._breakers.items()):
            if self.inventory.get(lane_id) is None:
                del self._breakers[lane_id]
                self._open.pop(lane_id, None)
                continue
            self._forget_old(breaker, now)
            if breaker.state == CLOSED and not breaker.failures:
                del self._breakers[lane_id]
        return {lane_id: b.as_dict(now) for lane_id, b in sorted(self._breakers.items())}

    def _forget_old(self, breaker: Breaker, now: float) -> None:
        while breaker.failures and breaker.failures[0] <= now - self.config.window:
            breaker.failures.popleft()
