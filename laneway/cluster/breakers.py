"""Circuit breakers shared between replicas (``routing.breaker.BreakerPeers`` on Redis).

- **An opening** on one replica opens the lane's breaker on every replica with the same deadline:
  the event carries the seconds left (counted when it is sent), and each replica sets its own
  monotonic deadline from them, keeping the later one if its breaker was open already. The opening
  is also written to Redis (``breakers/open/<lane>``, expiring with the deadline, which it holds
  on the wall clock) for the replicas that were not listening: each reads them whenever its bus
  (re)starts listening.
- **A closing** (a call through the lane succeeded) closes it everywhere and removes that record.
- **The half-open trial** goes to one replica: the one whose claim (``SET NX PX`` of
  ``breakers/trial/<lane>`` to its id, for as long as the trial may take) succeeds. The claim
  answers who holds it and for how long; the others pass the lane over until the trial's outcome
  (an opening or a closing) reaches them, asking again at most once a second meanwhile
  (``routing.breaker.TRIAL_RECHECK``). The holder lets go of the claim (compare-and-delete) as
  soon as its trial is over, with a verdict or without one.

What this replica tells goes out in the order it happened, from one task, off the request path.
Redis unreachable: the claim is granted (this replica decides alone, after at most the Redis
call's timeout, and at once while the store's breaker is open), events and records are lost for
that while (logged once), and the replicas converge again through the next openings and closings
and the records read on reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeGuard

import orjson

from laneway.clock import Clock
from laneway.cluster.bus import Bus
from laneway.routing.breaker import Breakers, Claim
from laneway.storage.errors import StorageError
from laneway.storage.redisstore import RedisStore

log = logging.getLogger("laneway.cluster")

BREAKER_OPENED = "breaker.opened"  # payload: {"lane", "left" (s), "by" (replica), "at" (wall clock)}
BREAKER_CLOSED = "breaker.closed"  # payload: {"lane", "by", "at"}
OPEN_PREFIX = "breakers/open/"  # <lane> -> {"by", "at", "until" (wall clock)}, expiring then
TRIAL_PREFIX = "breakers/trial/"  # <lane> -> the id of the replica holding its half-open trial

# KEYS[1]: the trial's key; ARGV: this replica's id, the claim's TTL (ms). Returns {granted,
# holder, ms left}. A claim of one's own is renewed (a release that never reached Redis).
CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1], tonumber(ARGV[2])}
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, holder, tonumber(ARGV[2])}
end
return {0, holder, redis.call('PTTL', KEYS[1])}
"""
# Let go of a claim only if it is still this replica's (it may have lapsed and been taken since).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class SharedBreakers:
    """The other replicas, for ``Breakers`` (``BreakerPeers``); ``listen`` applies what they tell."""

    _breakers: Breakers  # set by ``listen``, before any handler can run

    def __init__(self, store: RedisStore, bus: Bus, replica: str, clock: Clock) -> None:
        self.store = store
        self.bus = bus
        self.replica = replica
        self.clock = clock
        self._held: set[str] = set()  # lanes whose trial this replica claimed and still holds
        self._outbox: deque[Callable[[], Awaitable[None]]] = deque()
        self._sending: asyncio.Task[None] | None = None
        self._unreachable = False  # said once in the log, until Redis answers again

    def listen(self, breakers: Breakers) -> None:
        """Apply the other replicas' openings and closings to ``breakers``, from now on."""
        self._breakers = breakers
        self.bus.on(BREAKER_OPENED, self._opened_elsewhere)
        self.bus.on(BREAKER_CLOSED, self._closed_elsewhere)
        self.bus.on_listening(self._caught_up)

    # -- BreakerPeers -----------------------------------------------------------------------

    async def claim(self, lane_id: str, ttl: float) -> Claim:
        try:
            granted, holder, left_ms = await self.store.evaluate(
                CLAIM, [TRIAL_PREFIX + lane_id], [self.replica, max(1, round(ttl * 1000))]
            )
        except StorageError as exc:
            self._lost(exc, "deciding half-open trials alone")
            return Claim(True, self.replica, ttl)
        self._reached()
        if granted:
            self._held.add(lane_id)
        shown = holder.decode(errors="replace") if isinstance(holder, bytes) else None
        return Claim(bool(granted), shown, max(0.0, int(left_ms) / 1000))

    def opened(self, lane_id: str, left: float, at: float) -> None:
        deadline = self.clock.monotonic() + left  # what is left is counted again when it is sent
        self._queue(self._release_if_held(lane_id), lambda: self._tell_opened(lane_id, deadline, at))

    def closed(self, lane_id: str, at: float) -> None:
        self._queue(self._release_if_held(lane_id), lambda: self._tell_closed(lane_id, at))

    def trial_over(self, lane_id: str) -> None:
        self._queue(self._release_if_held(lane_id))

    # -- sending, in order, off the request path ---------------------------------------------

    def _release_if_held(self, lane_id: str) -> Callable[[], Awaitable[None]] | None:
        if lane_id not in self._held:
            return None
        self._held.discard(lane_id)
        key = TRIAL_PREFIX + lane_id
        return lambda: self._store_call(self.store.evaluate(RELEASE, [key], [self.replica]))

    def _queue(self, *jobs: Callable[[], Awaitable[None]] | None) -> None:
        self._outbox.extend(job for job in jobs if job is not None)
        if self._outbox and (self._sending is None or self._sending.done()):
            self._sending = asyncio.create_task(self._send(), name="breakers-told")

    async def _send(self) -> None:
        while self._outbox:
            await self._outbox.popleft()()

    async def _tell_opened(self, lane_id: str, deadline: float, at: float) -> None:
        left = deadline - self.clock.monotonic()
        if left <= 0:
            return
        record = orjson.dumps({"by": self.replica, "at": at, "until": self.clock.now() + left})
        await self._store_call(self.store.set(OPEN_PREFIX + lane_id, record, ttl=left))
        await self.bus.publish(BREAKER_OPENED, {"lane": lane_id, "left": left, "by": self.replica, "at": at})

    async def _tell_closed(self, lane_id: str, at: float) -> None:
        await self._store_call(self.store.delete(OPEN_PREFIX + lane_id))
        await self.bus.publish(BREAKER_CLOSED, {"lane": lane_id, "by": self.replica, "at": at})

    async def _store_call(self, call: Awaitable[Any]) -> None:
        try:
            await call
        except StorageError as exc:
            self._lost(exc, "the other replicas learn this breaker's state from their own calls")
        else:
            self._reached()

    def _lost(self, exc: StorageError, meanwhile: str) -> None:
        if not self._unreachable:
            self._unreachable = True
            log.warning("breakers: cannot reach the runtime store (%s); %s", exc.message, meanwhile)

    def _reached(self) -> None:
        if self._unreachable:
            self._unreachable = False
            log.info("breakers: the runtime store answers again")

    # -- what the others tell -------------------------------------------------------------------

    async def _opened_elsewhere(self, payload: dict[str, Any]) -> None:
        lane, left, by, at = payload.get("lane"), payload.get("left"), payload.get("by"), payload.get("at")
        if isinstance(lane, str) and _number(left) and isinstance(by, str) and _number(at):
            self._breakers.opened_elsewhere(lane, float(left), by, float(at))

    async def _closed_elsewhere(self, payload: dict[str, Any]) -> None:
        lane, at = payload.get("lane"), payload.get("at")
        if isinstance(lane, str) and _number(at):
            self._breakers.closed_elsewhere(lane, float(at))

    async def _caught_up(self) -> None:
        """Listening (again): the openings missed meanwhile are in the store."""
        try:
            found = await self.store.scan(OPEN_PREFIX)
        except StorageError as exc:
            self._lost(exc, "open breakers are learnt from events and calls")
            return
        now = self.clock.now()
        for key, raw in found.items():
            try:
                record = orjson.loads(raw)
                by, at, until = str(record["by"]), float(record["at"]), float(record["until"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if by != self.replica:
                self._breakers.opened_elsewhere(key.removeprefix(OPEN_PREFIX), until - now, by, at)

    async def aclose(self) -> None:
        """Stop sending (what is still queued is lost: claims lapse on their own)."""
        if self._sending is not None:
            self._sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sending


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
