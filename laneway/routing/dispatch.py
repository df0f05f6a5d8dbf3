"""Dispatch: serve a request from the best lane that can, failing over when one breaks.

For each request: resolve the name to candidate lanes (``candidates``: the backends' policy and
the key's apply), keep those that can serve what the request needs (``routing.needs``: tools, a
forced tool call, a JSON answer, images, reasoning; a 422 when none can), rank them (``ranked``:
lanes that emulate a need after those that have it, other facts equal), then try them in order
within the attempt budget and the request's deadline, one ``Attempts.run`` each (acquire, call,
learn: ``routing.attempt``). A failure whose verdict says another lane may serve the request
moves on to the next lane; any other ends the request. Lanes whose backends asked to be left
alone (used-up quota, a 503 that said when to come back) are held: not tried, and waited for
when they are back soon enough (``routing.holdoff``): a round of attempts, a wait, another round.

A stream is established and its first frame read before it is handed out, so a stream that
breaks before any byte reached the client fails over too; after that it is the client's, and a
break ends it with an error event (``api.streaming``). It holds its pool slot while it is being
established, or to its end when the backend says so (``stream_holds_slot``): then the attempt
hands the slot to the ``ObservedStream``, which releases it when the stream ends.

Every error that leaves carries its attribution; a request that needed more than one attempt, or
failed, leaves a failover record. A name no lane serves may trigger one refresh of the local
backends before the 404.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from laneway.clock import Clock
from laneway.config.schema import RoutingConfig
from laneway.errors import (
    LanewayError,
    ModelNotFound,
    NoLaneAvailable,
    PermissionDenied,
    Verdict,
)
from laneway.inventory.lanes import Health, Lane
from laneway.operations import Operation
from laneway.pools import PoolRegistry, Slot
from laneway.providers.abilities import Need
from laneway.providers.base import Call, Provider, Reply, ReplyStream, Usage, answer
from laneway.providers.base import stream as open_upstream
from laneway.routing.attempt import Attempts, LaneCall, Target
from laneway.routing.backends import Backends
from laneway.routing.breaker import Breakers
from laneway.routing.failover import FailoverLog, RequestInfo
from laneway.routing.holdoff import Holdoff
from laneway.routing.needs import able, emulated, needs_of, tier
from laneway.routing.rank import Facts, ranked_facts, spread
from laneway.routing.request import Dispatch
from laneway.routing.resolve import Candidate, OutOfRotation, Resolver
from laneway.routing.streams import ObservedStream, open_stream
from laneway.signals.store import Signals
from laneway.usage import UsageRecord

VIRTUAL = "virtual"  # the provider family of published lanes
T = TypeVar("T")


@dataclass(slots=True)
class Served(Generic[T]):
    """What came back, and who served it; ``emulated``: the request's needs that lane's family
    served by emulation (``routing.needs``), for the ``x-laneway-emulated`` header."""

    result: T
    lane: Lane
    attempts: int
    emulated: tuple[str, ...] = ()


class UsageSink(Protocol):
    """Told every served request (``storage.usage_writer.UsageRecorder`` writes them in batches,
    off the request path)."""

    def record(self, rec: UsageRecord) -> None: ...


class Router:
    def __init__(
        self,
        resolver: Resolver,
        providers: Mapping[str, Provider],
        *,
        backends: Backends,
        signals: Signals,
        pools: PoolRegistry,
        breakers: Breakers,
        failovers: FailoverLog,
        usage: UsageSink,
        settings: RoutingConfig,
        clock: Clock,
        seed: int,
        replica: str = "",
    ) -> None:
        self.resolver = resolver  # replaced when the declared backends change (the gateway's)
        self.backends = backends
        self.signals = signals  # told the outcome, headers and timing of every attempt
        self.pools = pools
        self.breakers = breakers
        self.failovers = failovers
        self.usage = usage
        self.settings = settings
        self.clock = clock
        self.seed = seed  # ranking's tie-break, and the draws that share load among equal lanes
        self.replica = replica  # this replica's id, on every usage record (cluster.replica_id)
        self._rng = random.Random(seed)
        self.holdoff = Holdoff(signals, clock, settings)
        self.attempts = Attempts(
            providers,
            backends=backends,
            signals=signals,
            pools=pools,
            breakers=breakers,
            failovers=failovers,
            clock=clock,
        )

    # -- candidates --------------------------------------------------------------------------

    async def candidates(
        self, name: str, lane_type: str, info: RequestInfo | None = None
    ) -> tuple[Candidate, ...]:
        """The lanes that may serve ``name`` for this request, before ranking; the backends'
        policy and the key's (published lanes or not) are applied here."""
        try:
            found = self.resolver.resolve(name, lane_type)
        except ModelNotFound as missing:
            if not await self.backends.refresh_local():
                raise self.backends.unavailable(name) or missing from None
            found = self._resolve_known(name, lane_type)
        except OutOfRotation as exc:
            exc.retry_after = self._back_in(exc.lanes)
            raise
        found = tuple(c for c in found if self.backends.allows(c.lane.backend, c.lane.model))
        if not found:
            raise PermissionDenied(
                f"'{name}' is served only by lanes the backends' model policy excludes", param="model"
            )
        if info is not None and not info.published_lanes:
            found = tuple(c for c in found if c.lane.family != VIRTUAL)
            if not found:
                raise PermissionDenied(
                    f"'{name}' is served only by published lanes, which this key may not use",
                    param="model",
                )
        return found

    def _resolve_known(self, name: str, lane_type: str) -> tuple[Candidate, ...]:
        """After the refresh a miss triggered: the lanes, or why a known model has none (503)."""
        try:
            return self.resolver.resolve(name, lane_type)
        except ModelNotFound as missing:
            raise self.backends.unavailable(name) or missing from None

    def _back_in(self, lanes: tuple[Lane, ...]) -> float:
        """Seconds until one of these out-of-rotation lanes is expected back: an open breaker's
        cooldown, a refused credential's; else a short wait (a stale lane is being re-checked,
        a publisher may reconnect)."""
        now = self.clock.monotonic()
        waits = []
        for lane in lanes:
            breaker = self.breakers.get(lane.id)
            if lane.health == Health.OPEN and breaker is not None:
                waits.append(breaker.open_until - now)
            elif lane.health == Health.DENIED:
                waits.append(self.backends.cooldown_left(lane.backend))
        return max(1.0, min(waits)) if waits else 5.0

    # -- ranking -----------------------------------------------------------------------------

    def ranked(self, targets: list[Target], needs: frozenset[Need] = frozenset()) -> list[Target]:
        """Best first, the load shared among equals (``rank.spread``); the lanes held by their
        backends are already left out (``Holdoff.ready``). A lone candidate (the common case: one
        lane serves the name) needs no facts."""
        if len(targets) <= 1:
            return targets
        return spread(ranked_facts(targets, lambda t: self._facts(t, needs), self.seed), self._rng)

    def _facts(self, target: Target, needs: frozenset[Need]) -> Facts:
        lane = target.lane
        status, p50, share = "unknown", None, None
        sig = self.signals.get(lane.backend)
        if sig is not None:
            status = self.signals.status(lane.backend)
            window = sig.lanes.get(lane.id)
            p50 = (window.latency if window else sig.latency).summary().p50
            quota = sig.requests
            if quota and quota.limit and quota.remaining is not None:
                share = quota.remaining / quota.limit
        pool = self.pools.pool_for(lane.backend, lane.id, target.config)
        queued, busy = pool.queued, pool.active / pool.slots
        support = tier(lane, target.provider, needs)
        return Facts(lane.id, lane.weight, status, p50, share, queued, busy, target.candidate.group, support)

    # -- serving -----------------------------------------------------------------------------

    async def _serve(
        self, op: Operation, body: dict[str, Any], raw: bytes, info: RequestInfo, call: LaneCall[T]
    ) -> Served[T]:
        """Every error that leaves carries its attribution, whether it came from resolving the
        name (404, 403, 503: no routable lane, 429: all exhausted) or from the attempts."""
        request = Dispatch.start(op, body, raw, info, self.clock, self.settings)
        self.breakers.advance()
        try:
            found = await self.candidates(request.requested, op.value, info)
            needs = needs_of(body)
            found = able(found, needs, self.attempts.providers.get, request.requested)
            return await self._rounds(request, found, needs, call)
        except LanewayError as exc:
            request.given_up(self.failovers)
            request.stamp(exc)
            raise

    async def _rounds(
        self, request: Dispatch, found: tuple[Candidate, ...], needs: frozenset[Need], call: LaneCall[T]
    ) -> Served[T]:
        """Rounds of attempts, until one serves the request or a failure ends it (raised). Between
        rounds the request may wait for a lane that asked to be left alone a moment (``holdoff``)."""
        while True:
            served = await self._round(request, found, needs, call)
            if served is not None:
                return served
            wait = self.holdoff.wait(found, request)
            if wait is None:
                raise self._refusal(request, found)
            await self.clock.sleep(wait)
            request.waited += wait

    async def _round(
        self, request: Dispatch, found: tuple[Candidate, ...], needs: frozenset[Need], call: LaneCall[T]
    ) -> Served[T] | None:
        """Try the ready candidates, best first, until one serves the request or the budget is
        spent; None if none served it."""
        ready = (self.attempts.target(c) for c in self.holdoff.ready(found, request))
        for target in self.ranked([t for t in ready if t is not None], needs):
            if request.spent(self.clock.monotonic()):
                break
            result = await self.attempts.run(request, target, call)
            if result is not None:
                return Served(result, target.lane, request.attempts, emulated(target.lane, needs))
        return None

    def _refusal(self, request: Dispatch, found: tuple[Candidate, ...]) -> LanewayError:
        """Why the request is not served: its last attempt's error; else its lanes are held (429:
        out of quota, 503: unavailable); else their breakers passed them over."""
        if request.last is not None:
            return request.last
        held = self.holdoff.refusal(found, request)
        if held is not None:
            return held
        return NoLaneAvailable(
            f"No lane could take '{request.requested}' now (breakers open); try again shortly",
            retry_after=self._back_in(tuple(c.lane for c in found)),
        )

    # -- the two shapes of an answer ---------------------------------------------------------

    async def send(
        self, op: Operation, body: dict[str, Any], raw: bytes, info: RequestInfo | None = None
    ) -> Served[Reply]:
        info = info or RequestInfo()
        served = await self._serve(op, body, raw, info, self._answer)
        self._record_usage(info, body, served.lane, served.attempts, served.result.usage, streamed=False)
        return served

    async def _answer(
        self, request: Dispatch, target: Target, call: Call, slot: Slot, called_at: float
    ) -> Reply:
        provider = target.provider
        reply = await answer(provider, request.op, call)
        elapsed = self.clock.monotonic() - called_at
        self.signals.success(provider.name, provider.family, target.lane.id, reply.headers, elapsed)
        return reply

    async def stream(
        self, op: Operation, body: dict[str, Any], raw: bytes, info: RequestInfo | None = None
    ) -> Served[ReplyStream]:
        """Returns once a lane's stream is established and its first frame read: failures before
        the first byte reached the client have been failed over here already."""
        return await self._serve(op, body, raw, info or RequestInfo(), self._open)

    async def _open(
        self, request: Dispatch, target: Target, call: Call, slot: Slot, called_at: float
    ) -> ReplyStream:
        """Establish the stream and read its first frame under the attempt's slot; a backend whose
        streams hold their slot to the end gets it handed on to the stream."""
        provider, lane, n = target.provider, target.lane, request.attempts
        inner, first = await open_stream(open_upstream(provider, request.op, call))
        info, body = request.info, request.body

        def ended(usage: Usage | None) -> None:
            self._record_usage(info, body, lane, n, usage, streamed=True)

        def broke(verdict: Verdict) -> None:
            self.attempts.broke_mid_stream(lane, verdict)

        return ObservedStream(
            inner,
            first,
            provider,
            lane.id,
            slot.hand_on() if target.config.stream_holds_slot else None,
            signals=self.signals,
            clock=self.clock,
            started=called_at,
            attribution=request.attribution(lane.id, n),
            on_failure=broke,
            on_end=ended,
        )

    def _record_usage(
        self,
        info: RequestInfo,
        body: dict[str, Any],
        lane: Lane,
        attempts: int,
        usage: Usage | None,
        *,
        streamed: bool,
    ) -> None:
        record = info.record
        if record is not None and usage is not None:
            record.prompt_tokens, record.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        self.usage.record(
            UsageRecord(
                at=self.clock.now(),
                caller=info.caller,
                requested=str(body.get("model")),
                lane=lane.id,
                backend=lane.backend,
                model=lane.model,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                request_id=info.request_id,
                attempts=attempts,
                streamed=streamed,
                replica=self.replica,
            )
        )
