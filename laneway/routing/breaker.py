"""Per-lane circuit breakers.

``failures`` failures within ``window`` seconds open a lane's breaker: the lane leaves rotation
(its health becomes ``open``, weight 0). After ``cooldown`` it is half-open: routable at half
weight, one trial call at a time. A success closes it; a failure re-opens it, and a re-opened
breaker keeps the later of its old and new deadlines. Time is the injected clock's.

The state is mirrored into the inventory's lane health, so it shows in /admin/lanes, the CLI and
/metrics, and the resolver and ranking see it without asking. A lane denied by an auth cooldown
is the cooldown's: breakers never overwrite ``denied``.

Several replicas (cluster mode) share their breakers through ``BreakerPeers``
(``laneway.cluster.breakers``): an opening here opens the lane's breaker on every replica with the
same deadline (the seconds left travel, each replica counts them on its own monotonic clock), a
closing closes it everywhere, and of all the replicas whose breaker is half-open exactly one gets
the trial: after ``allow`` grants a trial locally (synchronously, as alone), the attempt claims it
(``claim_trial``, the only step that awaits the peers, and only for a half-open lane); a replica
refused the claim passes the lane over until the trial's outcome reaches it (and asks again every
``TRIAL_RECHECK`` seconds meanwhile, in case the trial ended without one).
What the peers tell is applied by ``opened_elsewhere``/``closed_elsewhere``, ordered by the wall
clock of the change: a late event never undoes a newer one. Alone (the embedded default) there
are no peers, nothing is claimed, and nothing here awaits.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from laneway.clock import Clock
from laneway.config.schema import BreakerConfig
from laneway.inventory.lanes import HELD, Health
from laneway.inventory.store import Inventory

log = logging.getLogger("laneway.routing")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
# A half-open trial's claim lapses after the backend's call timeout, but never later than this: a
# replica that died during its trial (or a local box with a 30 min timeout) must not keep the
# lane out of every replica's rotation for longer.
TRIAL_TTL_CAP = 60.0
# A replica refused the trial asks again after this long at the latest (while the lane is still
# half-open): a trial that ended without a verdict (its caller left) is let go at once, and the
# lane is tried again soon, at the cost of one Redis call per second per half-open lane.
TRIAL_RECHECK = 1.0


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim of a half-open trial."""

    granted: bool
    holder: str | None = None  # the replica that holds the trial (None: no one says)
    left: float = 0.0  # seconds the holder's claim has left


class BreakerPeers(Protocol):
    """The other replicas, as the breakers see them. The notifications are synchronous and do no
    I/O (they run on the request path): the implementation sends them off it, in order."""

    replica: str  # this replica's id, shown as who opened a breaker or holds its trial

    async def claim(self, lane_id: str, ttl: float) -> Claim:
        """Claim the lane's half-open trial for ``ttl`` seconds; granted when nobody holds it (or
        when the peers cannot be asked: this replica then decides alone)."""
        ...

    def opened(self, lane_id: str, left: float, at: float) -> None:
        """The lane's breaker opened here (at ``at``, wall clock) for ``left`` more seconds."""

    def closed(self, lane_id: str, at: float) -> None:
        """The lane's breaker closed here (a call succeeded)."""

    def trial_over(self, lane_id: str) -> None:
        """A trial of the lane ended here (or was never made): its claim, if held, is let go."""


@dataclass
class Breaker:
    state: str = CLOSED
    failures: deque[float] = field(default_factory=deque)  # monotonic times within the window
    open_until: float = 0.0
    trial: bool = False  # a half-open trial call is in flight
    # Cluster mode only (None / 0 alone).
    opened_by: str | None = None  # the replica whose failures opened it
    trial_holder: str | None = None  # the replica holding the half-open trial
    elsewhere_until: float = 0.0  # monotonic: another replica holds the trial until then
    changed_at: float = 0.0  # wall clock of the last opening or closing, here or told

    def as_dict(self, now: float) -> dict[str, object]:
        shown: dict[str, object] = {
            "state": self.state,
            "recent_failures": len(self.failures),
            "open_for": max(0.0, self.open_until - now) if self.state == OPEN else 0.0,
        }
        if self.opened_by is not None and self.state != CLOSED:
            shown["opened_by"] = self.opened_by
        if self.trial_holder is not None and self.state == HALF_OPEN:
            shown["trial"] = self.trial_holder
        return shown


class Breakers:
    def __init__(
        self, clock: Clock, config: BreakerConfig, inventory: Inventory, peers: BreakerPeers | None = None
    ) -> None:
        self.clock = clock
        self.config = config
        self.inventory = inventory
        self.peers = peers
        self._breakers: dict[str, Breaker] = {}
        self._open: dict[str, float] = {}  # lane -> open_until, for the cheap half-open check
        # Cluster mode: when each lane's breaker last closed (wall clock), kept after the breaker
        # itself is dropped, so that an opening told late (made before that) is not applied.
        self._closed_at: dict[str, float] = {}

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
                breaker.trial_holder, breaker.elsewhere_until = None, 0.0
                self._mirror(lane_id, Health.HALF_OPEN)
                log.info("breaker half-open", extra={"lane": lane_id})

    def allow(self, lane_id: str) -> bool:
        """May this lane be tried now? A half-open lane admits one trial at a time (in cluster
        mode, the attempt then claims it: ``needs_claim``), and none while another replica holds it."""
        breaker = self._breakers.get(lane_id)
        if breaker is None or breaker.state == CLOSED:
            return True
        if (
            breaker.state == HALF_OPEN
            and not breaker.trial
            and self.clock.monotonic() >= breaker.elsewhere_until
        ):
            breaker.trial = True
            return True
        return False

    def needs_claim(self, lane_id: str) -> bool:
        """Did ``allow`` just grant a half-open trial that the other replicas must agree to (cluster
        mode)? A dict lookup: a closed breaker costs nothing more."""
        if self.peers is None:
            return False
        breaker = self._breakers.get(lane_id)
        return breaker is not None and breaker.state == HALF_OPEN and breaker.trial

    async def claim_trial(self, lane_id: str, timeout: float) -> bool:
        """Claim the trial ``allow`` granted, for the call's ``timeout`` (capped: TRIAL_TTL_CAP).
        False: another replica holds it (the lane is passed over until its outcome arrives or its
        claim lapses), or the breaker re-opened meanwhile. True if closed meanwhile."""
        assert self.peers is not None  # needs_claim said so
        claim = await self.peers.claim(lane_id, min(timeout, TRIAL_TTL_CAP))
        breaker = self._breakers.get(lane_id)
        if breaker is None or breaker.state != HALF_OPEN:  # an event closed or re-opened it meanwhile
            if claim.granted:
                self.peers.trial_over(lane_id)
            return breaker is None or breaker.state == CLOSED
        breaker.trial_holder = claim.holder
        if claim.granted:
            return True
        breaker.trial = False
        breaker.elsewhere_until = self.clock.monotonic() + min(claim.left, TRIAL_RECHECK)
        log.info("half-open trial held by another replica", extra={"lane": lane_id, "by": claim.holder})
        return False

    def success(self, lane_id: str) -> None:
        """A call succeeded: a half-open (or open) breaker closes. A closed one keeps the failures
        of its window: "5 in 60 s" counts failures, so a lane failing one call in three still
        opens, successes in between or not."""
        breaker = self._breakers.get(lane_id)
        if breaker is None:
            return
        if breaker.state != CLOSED:
            self._close(lane_id, breaker, self.clock.now())
            if self.peers is not None:
                self.peers.closed(lane_id, breaker.changed_at)
        self._forget_old(breaker, self.clock.monotonic())
        if not breaker.failures:
            self._drop(lane_id, breaker)  # a closed breaker with no recent failures holds nothing

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
            if self.peers is not None:
                self.peers.trial_over(lane_id)

    def _open_breaker(self, lane_id: str, breaker: Breaker, now: float) -> None:
        # Re-opening keeps the later deadline: a breaker is never shortened by a new failure.
        until = max(breaker.open_until, now + self.config.cooldown)
        changed = breaker.state != OPEN or until != breaker.open_until
        breaker.open_until = until
        breaker.state, breaker.trial = OPEN, False
        breaker.failures.clear()
        self._open[lane_id] = breaker.open_until
        self._mirror(lane_id, Health.OPEN)
        log.warning("breaker open", extra={"lane": lane_id, "for": breaker.open_until - now})
        if self.peers is not None and changed:
            breaker.opened_by, breaker.trial_holder = self.peers.replica, None
            breaker.changed_at = self.clock.now()
            self.peers.opened(lane_id, breaker.open_until - now, breaker.changed_at)

    def _close(self, lane_id: str, breaker: Breaker, at: float) -> None:
        log.info("breaker closed", extra={"lane": lane_id})
        self._mirror(lane_id, Health.HEALTHY)
        self._open.pop(lane_id, None)
        breaker.state, breaker.trial = CLOSED, False
        breaker.failures.clear()
        breaker.opened_by, breaker.trial_holder, breaker.elsewhere_until = None, None, 0.0
        breaker.changed_at = at

    # -- what the other replicas tell (cluster mode) ------------------------------------------

    def opened_elsewhere(self, lane_id: str, left: float, by: str, at: float) -> None:
        """Another replica opened the lane's breaker at ``at`` (wall clock) for ``left`` more
        seconds: open it here too, keeping the later deadline. Older than what this replica last
        did or heard (``at`` before it): ignored."""
        breaker = self._breakers.get(lane_id)
        if breaker is None:
            breaker = self._breakers[lane_id] = Breaker(changed_at=self._closed_at.pop(lane_id, 0.0))
        if left <= 0 or at < breaker.changed_at:
            return
        now = self.clock.monotonic()
        until = max(breaker.open_until, now + left)
        if breaker.state == OPEN and until == breaker.open_until:
            return
        breaker.open_until, breaker.state, breaker.trial = until, OPEN, False
        breaker.failures.clear()
        breaker.opened_by, breaker.trial_holder, breaker.elsewhere_until = by, None, 0.0
        breaker.changed_at = at
        self._open[lane_id] = until
        self._mirror(lane_id, Health.OPEN)
        log.warning("breaker open (told)", extra={"lane": lane_id, "for": until - now, "by": by})

    def closed_elsewhere(self, lane_id: str, at: float) -> None:
        """Another replica's call through the lane succeeded at ``at``: its breaker closes here
        too, unless this replica opened it (or heard of an opening) later."""
        breaker = self._breakers.get(lane_id)
        if breaker is None or breaker.state == CLOSED or at < breaker.changed_at:
            return
        self._close(lane_id, breaker, at)
        if self.peers is not None:
            self.peers.trial_over(lane_id)  # a trial of ours still in flight has no claim to keep
        self._drop(lane_id, breaker)

    def _drop(self, lane_id: str, breaker: Breaker) -> None:
        """Forget a closed breaker; in cluster mode remember when it closed (``opened_elsewhere``)."""
        del self._breakers[lane_id]
        if self.peers is not None and breaker.changed_at:
            self._closed_at[lane_id] = breaker.changed_at

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
                self._drop(lane_id, breaker)
        for lane_id in [lane for lane in self._closed_at if self.inventory.get(lane) is None]:
            del self._closed_at[lane_id]
        return {lane_id: b.as_dict(now) for lane_id, b in sorted(self._breakers.items())}

    def _forget_old(self, breaker: Breaker, now: float) -> None:
        while breaker.failures and breaker.failures[0] <= now - self.config.window:
            breaker.failures.popleft()
