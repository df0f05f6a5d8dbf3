"""One attempt: one try of one lane for one request, in three steps.

1. **acquire**: the lane's circuit breaker lets it through (a half-open lane admits one trial at a
   time, in cluster mode one across the replicas: the only step that may await Redis, and only
   for a half-open lane; a lane it refuses is passed over, not tried), then a slot of the
   backend's (or lane's) pool: a fair-share queue with its own deadline, so queueing does not
   eat the call's timeout.
2. **call**: the provider, under the slot (``async with``: the block owns the slot and frees it
   at its end, whatever happens, unless the call hands it on: a stream that holds its slot to
   its end takes it over). The call's own timeout is the backend's, never past the deadline.
3. **learn**: what the outcome teaches. A failure is classified once (``laneway.errors.classify``)
   and its verdict tells the signals, the lane's breaker, the credential's cooldown and the stale
   lane, and the router whether another lane may be tried.

A candidate's provider and backend config are looked up once (``Target``), before it is ranked,
and passed down to every step.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from laneway import context
from laneway.clock import Clock
from laneway.config.schema import BackendConfig
from laneway.errors import LanewayError, UpstreamError, UpstreamStatusError, Verdict, classify
from laneway.failovers import Attempt
from laneway.inventory.lanes import Lane
from laneway.pools import PoolRegistry, Slot
from laneway.providers.base import Call, Provider
from laneway.routing.backends import Backends
from laneway.routing.breaker import Breakers
from laneway.routing.failover import FailoverLog
from laneway.routing.request import Dispatch
from laneway.routing.resolve import Candidate
from laneway.signals.store import Signals

log = logging.getLogger("laneway.routing")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Target:
    """A candidate resolved for one attempt: its lane, its backend's provider and config."""

    candidate: Candidate
    provider: Provider
    config: BackendConfig

    @property
    def lane(self) -> Lane:
        return self.candidate.lane


# The call step of one shape of answer (a whole reply, or a stream): given the attempt's target,
# the provider call, the slot held for it and when the call started (monotonic).
LaneCall = Callable[[Dispatch, Target, Call, Slot, float], Awaitable[T]]


class Attempts:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        *,
        backends: Backends,
        signals: Signals,
        pools: PoolRegistry,
        breakers: Breakers,
        failovers: FailoverLog,
        clock: Clock,
    ) -> None:
        self.providers = providers
        self.backends = backends
        self.signals = signals
        self.pools = pools
        self.breakers = breakers
        self.failovers = failovers
        self.clock = clock

    def target(self, candidate: Candidate) -> Target | None:
        """The candidate's provider and config, or None if its backend went since its lanes were
        read (its lanes are then not called)."""
        backend = candidate.lane.backend
        provider = self.providers.get(backend)
        config = self.backends.config(backend)
        return Target(candidate, provider, config) if provider is not None and config is not None else None

    async def run(self, request: Dispatch, target: Target, call: LaneCall[T]) -> T | None:
        """Try ``target`` once: its answer, or None if it failed in a way another lane may mend
        (or its breaker passed it over). A failure no other lane can mend is raised."""
        lane = target.lane
        if not self.breakers.allow(lane.id):
            # Not an attempt (number 0): the lane was passed over, nothing was sent to it.
            request.note(Attempt(0, lane.id, lane.backend, "skipped", "breaker open"))
            return None
        if self.breakers.needs_claim(lane.id) and not await self._claimed(request, target):
            return None
        n = request.begin(lane)
        context.note_lane(lane.id)  # every log line of this request from here on names the lane
        queued_at = self.clock.monotonic()
        called_at: float | None = None  # set once a slot is held
        try:
            slot = await self._acquire(request, target)
            called_at = self.clock.monotonic()
            self._started(request, lane, n, called_at - queued_at)
            async with slot:
                result = await call(request, target, self._call(request, target, called_at), slot, called_at)
        except LanewayError as exc:
            self.failed(request, target, exc, (n, queued_at, called_at))
            return None
        except BaseException:  # cancelled (the client left), or a bug: no verdict on the lane
            self.breakers.release_trial(lane.id)
            raise
        self._succeeded(request, target, n, queued_at, called_at)
        return result

    # -- 1: acquire ----------------------------------------------------------------------------

    async def _claimed(self, request: Dispatch, target: Target) -> bool:
        """The breaker granted a half-open trial in cluster mode (the only case that awaits: a
        closed breaker was decided synchronously): claim it among the replicas, for as long as
        the call may take. A lane whose trial another replica holds is passed over."""
        lane = target.lane
        try:
            claimed = await self.breakers.claim_trial(lane.id, target.config.timeout)
        except BaseException:  # cancelled while claiming: the trial is nobody's
            self.breakers.release_trial(lane.id)
            raise
        if not claimed:
            request.note(Attempt(0, lane.id, lane.backend, "skipped", "trial held by another replica"))
        return claimed

    async def _acquire(self, request: Dispatch, target: Target) -> Slot:
        lane, info = target.lane, request.info
        pool = self.pools.pool_for(lane.backend, lane.id, target.config)
        return await pool.acquire(info.caller, info.priority)

    def _started(self, request: Dispatch, lane: Lane, n: int, queued: float) -> None:
        record = request.info.record
        if record is not None:
            record.queue_wait += queued
            record.lane, record.backend, record.attempts = lane.id, lane.backend, n

    # -- 2: call -------------------------------------------------------------------------------

    def _call(self, request: Dispatch, target: Target, called_at: float) -> Call:
        """The provider call: the lane's model and the route's effort, and the call's own timeout
        (per backend: a slow local box may get 30 min), never past the request's deadline. Time
        spent queued did not count against it."""
        candidate, body = target.candidate, request.body
        timeout = min(max(0.001, request.deadline - called_at), target.config.timeout)
        model, native = candidate.lane.model, request.info.native
        if body.get("model") == model:
            return Call(model, body, request.raw or None, candidate.effort, timeout, native)
        return Call(model, {**body, "model": model}, None, candidate.effort, timeout, native)

    # -- 3: learn ------------------------------------------------------------------------------

    def _succeeded(
        self, request: Dispatch, target: Target, n: int, queued_at: float, called_at: float
    ) -> None:
        lane = target.lane
        self.breakers.success(lane.id)
        if request.record is not None:
            request.served(lane, self._entry(n, lane, None, None, queued_at, called_at), self.failovers)

    def failed(
        self, request: Dispatch, target: Target, exc: LanewayError, when: tuple[int, float, float | None]
    ) -> None:
        """What a failed attempt teaches, as its verdict says; raises ``exc`` if no other lane may
        be tried for this request. ``when``: the attempt's number, when it queued for a slot and
        when its call started (None: it never got a slot)."""
        lane, provider = target.lane, target.provider
        verdict = classify(exc, now=self.clock.now())
        self.signals.failure(provider.name, provider.family, lane.id, exc, verdict)
        if verdict.unhealthy:
            self.breakers.failure(lane.id)
        else:
            self.breakers.release_trial(lane.id)
        if verdict.auth_failure and isinstance(exc, UpstreamError):
            self.backends.credential_refused(lane.backend, exc)
        elif verdict.stale_lane:
            self.backends.lane_stale(lane.id)
        n, queued_at, called_at = when
        request.note(self._entry(n, lane, verdict, exc, queued_at, called_at))
        request.last = exc
        if not verdict.retryable:
            raise exc
        if not (verdict.rate_limited or verdict.unavailable):
            request.failed.add(lane.id)  # it said nothing of coming back: not worth waiting for
        log.warning(
            "attempt failed, trying the next lane",
            extra={"lane": lane.id, "attempt": n, "error": exc.message},
        )

    def broke_mid_stream(self, lane: Lane, verdict: Verdict) -> None:
        """A stream the client already reads broke: it cannot fail over, but it counts against the
        lane's breaker like a failed call (a backend that breaks every stream after its first byte
        must leave rotation)."""
        if verdict.unhealthy:
            self.breakers.failure(lane.id)

    def _entry(
        self,
        n: int,
        lane: Lane,
        verdict: Verdict | None,
        exc: LanewayError | None,
        queued_at: float,
        called_at: float | None,
    ) -> Attempt:
        """The record of one attempt: served (no verdict), or failed as its verdict says. An attempt
        that never got a slot (``called_at`` None) spent all its time queued."""
        now = self.clock.monotonic()
        called_at = now if called_at is None else called_at
        status = exc.upstream_status if isinstance(exc, UpstreamStatusError) else None
        outcome = "served" if verdict is None else _outcome(verdict)
        return Attempt(
            attempt=n,
            lane=lane.id,
            backend=lane.backend,
            outcome=outcome,
            error=exc.message if exc else None,
            code=exc.error_code if exc else None,
            status=status,
            queued=called_at - queued_at,
            elapsed=now - called_at,
        )


def _outcome(verdict: Verdict) -> str:
    if verdict.rate_limited:
        return "rate_limited"  # quota, not a failure of the lane
    if verdict.unavailable:
        return "unavailable"  # it said when to come back: not a failure of the lane either
    return "failed"
