"""Dispatch: serve a request from the best lane that can, failing over when one breaks.

For each request: resolve the name to candidate lanes, rank them (``rank``), then try them in
order within the attempt budget and the request's deadline. Each attempt:

1. passes the lane's circuit breaker (a half-open lane admits one trial at a time);
2. takes a slot in the backend's (or lane's) pool: a fair-share queue with its own deadline, so
   queueing does not consume the call's timeout; a full queue or a queue timeout moves on;
3. calls the provider. A retryable error (connect, timeout, 404 of a stale lane, 408, 409, 429,
   5xx, 529, a stream broken before its first byte) moves on to the next lane; any other ends the
   request. A 401/403 also starts the credential's cooldown; a 404 marks the lane stale.

A stream is established and its first frame read before it is handed out, so a stream that
breaks before any byte reached the client fails over too; after that it is the client's, and a
break ends it with an error event (``api.streaming``). It holds its pool slot while it is being
established, or to its end when the backend says so (``stream_holds_slot``).

Every error that leaves carries its attribution; a request that needed more than one attempt
leaves a failover record. The backend's policy is checked again here (fail closed), and a name no
lane serves may trigger one refresh of the local backends before the 404.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

from laneway.clock import Clock, SystemClock
from laneway.config.schema import BackendConfig, RoutingConfig
from laneway.errors import (
    Attribution,
    LanewayError,
    ModelNotFound,
    NoLaneAvailable,
    PermissionDenied,
    QueueFull,
    QueueTimeout,
    QuotaExhausted,
    UpstreamError,
    UpstreamStatusError,
    Verdict,
    classify,
)
from laneway.inventory.lanes import Health, Lane
from laneway.operations import Operation
from laneway.pools import PoolRegistry, Slot
from laneway.providers.base import Call, Provider, Reply, ReplyStream, Usage
from laneway.routing.breaker import Breakers
from laneway.routing.failover import Attempt, FailoverLog, FailoverRecord, RequestInfo
from laneway.routing.rank import Facts, rank
from laneway.routing.resolve import Candidate, OutOfRotation, Resolver
from laneway.routing.streams import ObservedStream, open_stream
from laneway.signals.store import Signals
from laneway.storage.usage_writer import UsageRecorder
from laneway.usage import UsageRecord

log = logging.getLogger("laneway.routing")
VIRTUAL = "virtual"  # the provider family of published lanes
T = TypeVar("T")


@dataclass(slots=True)
class Served(Generic[T]):
    """What came back, and who served it."""

    result: T
    lane: Lane
    attempts: int


class BackendFeedback(Protocol):
    """What the router asks of, and tells, the inventory (the reconciler implements it)."""

    def config(self, backend: str) -> BackendConfig | None: ...

    def allows(self, backend: str, model: str) -> bool: ...

    async def refresh_local(self) -> bool: ...

    async def credential_refused(self, backend: str, exc: UpstreamError) -> None: ...

    def lane_stale(self, lane_id: str) -> None: ...

    def unavailable(self, name: str) -> NoLaneAvailable | None:
        """Why a name no lane serves is a known model that cannot be served now (None: unknown)."""
        ...

    def cooldown_left(self, backend: str) -> float:
        """Seconds left of the backend's auth cooldown (0: none)."""
        ...


class Router:
    def __init__(
        self,
        resolver: Resolver,
        providers: Mapping[str, Provider],
        *,
        backends: BackendFeedback | None = None,
        signals: Signals | None = None,
        pools: PoolRegistry | None = None,
        breakers: Breakers | None = None,
        failovers: FailoverLog | None = None,
        usage: UsageRecorder | None = None,
        settings: RoutingConfig | None = None,
        clock: Clock | None = None,
        seed: int = 0,
    ) -> None:
        self.resolver = resolver
        self.providers = providers
        self.backends = backends
        self.signals = signals  # told the outcome, headers and timing of every attempt
        self.pools = pools
        self.breakers = breakers
        self.failovers = failovers
        self.usage = usage  # told every served request, written in batches off the request path
        self.settings = settings or RoutingConfig()
        self.clock = clock or SystemClock()
        self.seed = seed

    # -- candidates --------------------------------------------------------------------------

    async def candidates(
        self, name: str, lane_type: str, info: RequestInfo | None = None
    ) -> tuple[Candidate, ...]:
        """The lanes that may serve ``name`` for this request, before ranking; the backends'
        policy and the key's (published lanes or not) are applied here."""
        backends = self.backends
        try:
            found = self.resolver.resolve(name, lane_type)
        except ModelNotFound:
            if backends is not None and await backends.refresh_local():
                found = self._resolve_known(name, lane_type)
            else:
                unavailable = backends.unavailable(name) if backends is not None else None
                if unavailable is not None:
                    raise unavailable from None
                raise
        except OutOfRotation as exc:
            exc.retry_after = self._back_in(exc.lanes)
            raise
        if backends is not None:
            allowed = tuple(c for c in found if backends.allows(c.lane.backend, c.lane.model))
            if not allowed:
                raise PermissionDenied(
                    f"'{name}' is served only by lanes the backends' model policy excludes", param="model"
                )
            found = allowed
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
        except ModelNotFound:
            unavailable = self.backends.unavailable(name) if self.backends is not None else None
            if unavailable is not None:
                raise unavailable from None
            raise

    def _back_in(self, lanes: tuple[Lane, ...]) -> float:
        """Seconds until one of these out-of-rotation lanes is expected back: an open breaker's
        cooldown, a refused credential's; else a short wait (a stale lane is being re-checked,
        a publisher may reconnect)."""
        now = self.clock.monotonic()
        waits = []
        for lane in lanes:
            breaker = self.breakers.get(lane.id) if self.breakers is not None else None
            if lane.health == Health.OPEN and breaker is not None:
                waits.append(breaker.open_until - now)
            elif lane.health == Health.DENIED and self.backends is not None:
                waits.append(self.backends.cooldown_left(lane.backend))
        return max(1.0, min(waits)) if waits else 5.0

    def ranked(self, candidates: tuple[Candidate, ...]) -> list[Candidate]:
        """Best first; exhausted lanes (until their reset) left out. A lone candidate (the common
        case: one lane serves the name) needs only the exhaustion check, not the facts."""
        signals = self.signals
        if len(candidates) == 1:
            lane = candidates[0].lane
            exhausted = signals is not None and signals.status(lane.backend) == "exhausted"
            return [] if exhausted else list(candidates)
        return rank(candidates, self._facts, self.seed)

    def _facts(self, candidate: Candidate) -> Facts:
        lane = candidate.lane
        status, p50, share = "unknown", None, None
        signals = self.signals
        if signals is not None:
            sig = signals.get(lane.backend)
            if sig is not None:
                status = signals.status(lane.backend)
                window = sig.lanes.get(lane.id)
                p50 = (window.latency if window else sig.latency).summary().p50
                quota = sig.requests
                if quota and quota.limit and quota.remaining is not None:
                    share = quota.remaining / quota.limit
        queued, busy = 0, 0.0
        if self.pools is not None and self.backends is not None:
            config = self.backends.config(lane.backend)
            if config is not None:
                pool = self.pools.pool_for(lane.backend, lane.id, config)
                queued, busy = pool.queued, pool.active / pool.slots
        return Facts(lane.id, lane.weight, status, p50, share, queued, busy, candidate.group)

    # -- attempts ----------------------------------------------------------------------------

    def _call(self, candidate: Candidate, body: dict[str, Any], raw: bytes, timeout: float | None) -> Call:
        model = candidate.lane.model
        if body.get("model") == model:
            return Call(model=model, body=body, raw=raw, effort=candidate.effort, timeout=timeout)
        return Call(model=model, body={**body, "model": model}, effort=candidate.effort, timeout=timeout)

    async def _acquire(self, lane: Lane, info: RequestInfo) -> Slot | None:
        if self.pools is None or self.backends is None:
            return None
        config = self.backends.config(lane.backend)
        if config is None:
            return None
        return await self.pools.pool_for(lane.backend, lane.id, config).acquire(info.caller, info.priority)

    async def _try(
        self,
        op: Operation,
        body: dict[str, Any],
        raw: bytes,
        info: RequestInfo,
        send: Callable[[Provider, Lane, Call, Slot | None, float], Awaitable[T]],
    ) -> Served[T]:
        """Every error that leaves carries its attribution, whether it came from resolving the
        name (404, 403, 503: no routable lane, 429: all exhausted) or from the attempts."""
        try:
            return await self._attempts(op, body, raw, info, send)
        except LanewayError as exc:
            if exc.attribution is None:
                exc.attribution = self._attribution(info, body, None, 0)
            raise

    def _attribution(
        self, info: RequestInfo, body: dict[str, Any], lane: str | None, attempt: int
    ) -> Attribution:
        prompt = _prompt(body) if self.settings.record_prompts else None
        return Attribution(info.caller, info.request_id, info.run_id, lane, attempt, prompt)

    async def _attempts(
        self,
        op: Operation,
        body: dict[str, Any],
        raw: bytes,
        info: RequestInfo,
        send: Callable[[Provider, Lane, Call, Slot | None, float], Awaitable[T]],
    ) -> Served[T]:
        clock = self.clock
        started = clock.monotonic()
        deadline = started + self.settings.deadline
        if self.breakers is not None:
            self.breakers.advance()
        requested = str(body.get("model"))
        found = await self.candidates(requested, op.value, info)
        candidates = self.ranked(found)
        if not candidates:
            raise self._exhausted(requested, found)
        started_at = clock.now()
        # The failover record exists only once something went wrong: most requests are served by
        # their first lane and should not pay for a record they would throw away.
        record: FailoverRecord | None = None

        def note(entry: Attempt) -> FailoverRecord:
            nonlocal record
            if record is None:
                record = FailoverRecord(
                    request_id=info.request_id,
                    run_id=info.run_id,
                    caller=info.caller,
                    requested=requested,
                    operation=op.value,
                    started_at=started_at,
                    prompt=_prompt(body) if self.settings.record_prompts else None,
                )
            record.attempts.append(entry)
            return record

        last: LanewayError | None = None
        attempt = 0
        for candidate in candidates:
            lane = candidate.lane
            provider = self.providers.get(lane.backend)
            if provider is None:  # the backend was removed since the lanes were read
                continue
            if attempt >= self.settings.attempts or clock.monotonic() >= deadline:
                break
            if self.breakers is not None and not self.breakers.allow(lane.id):
                # Not an attempt (number 0): the lane was passed over, nothing was sent to it.
                note(Attempt(0, lane.id, lane.backend, "skipped", "breaker open"))
                continue
            attempt += 1
            queued_at = clock.monotonic()
            try:
                slot = await self._acquire(lane, info)
            except (QueueFull, QueueTimeout) as exc:
                self._no_verdict(lane)
                verdict = classify(exc, now=clock.now())
                note(self._attempt(attempt, lane, verdict, exc, queued_at, clock.monotonic()))
                last = exc
                continue
            except BaseException:
                self._no_verdict(lane)
                raise
            called_at = clock.monotonic()
            if info.record is not None:
                info.record.queue_wait += called_at - queued_at
                info.record.lane, info.record.backend, info.record.attempts = lane.id, lane.backend, attempt
            # The call's own timeout (per backend: a slow local box may get 30 min), never past
            # the request's deadline. Time spent queued above did not count against it.
            config = self.backends.config(lane.backend) if self.backends else None
            timeout = max(0.001, deadline - called_at)
            if config is not None:
                timeout = min(timeout, config.timeout)
            try:
                result = await send(
                    provider, lane, self._call(candidate, body, raw, timeout), slot, called_at
                )
            except UpstreamError as exc:
                if slot is not None:
                    slot.release()
                verdict = await self._failed(provider, lane, exc)
                note(self._attempt(attempt, lane, verdict, exc, queued_at, called_at))
                last = exc
                if not verdict.retryable:
                    break
                log.warning(
                    "attempt failed, trying the next lane",
                    extra={
                        "lane": lane.id,
                        "attempt": attempt,
                        "error": exc.message,
                        "request_id": info.request_id,
                    },
                )
                continue
            except BaseException:
                if slot is not None:
                    slot.release()
                self._no_verdict(lane)
                raise
            if self.breakers is not None:
                self.breakers.success(lane.id)
            if record is not None and self.failovers is not None:  # served, but not at the first try
                served = note(self._attempt(attempt, lane, None, None, queued_at, called_at))
                served.outcome, served.served_by = "served", lane.id
                self.failovers.add(served)
            return Served(result, lane, attempt)
        if last is None:
            last = NoLaneAvailable(
                f"No lane could take '{requested}' now (breakers open); try again shortly",
                retry_after=self._back_in(tuple(c.lane for c in candidates)),
            )
        if self.failovers is not None and record is not None:
            self.failovers.add(record)
        tried = [a.lane for a in (record.attempts if record else []) if a.outcome != "skipped"]
        last.attribution = self._attribution(info, body, tried[-1] if tried else None, attempt)
        raise last

    def _exhausted(self, requested: str, found: tuple[Candidate, ...]) -> QuotaExhausted:
        """Every candidate is exhausted: answer 429, retry after the earliest reset."""
        now = self.clock.now()
        resets = [
            sig.exhausted_until
            for c in found
            if self.signals is not None
            and (sig := self.signals.get(c.lane.backend)) is not None
            and sig.exhausted_until is not None
        ]
        wait = max(1.0, min(resets) - now) if resets else 1.0
        return QuotaExhausted(
            f"Every lane that serves '{requested}' has used up its quota; retry in {wait:.0f}s",
            retry_after=wait,
        )

    def _attempt(
        self,
        n: int,
        lane: Lane,
        verdict: Verdict | None,
        exc: LanewayError | None,
        queued_at: float,
        called_at: float,
    ) -> Attempt:
        """The record of one attempt: served (no verdict), or failed as its verdict says."""
        now = self.clock.monotonic()
        status = exc.upstream_status if isinstance(exc, UpstreamStatusError) else None
        outcome = "served" if verdict is None else "failed"
        if verdict is not None and verdict.rate_limited:
            outcome = "rate_limited"  # quota, not a failure of the lane
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

    def _no_verdict(self, lane: Lane) -> None:
        if self.breakers is not None:
            self.breakers.release_trial(lane.id)

    async def _failed(self, provider: Provider, lane: Lane, exc: UpstreamError) -> Verdict:
        """What one failed attempt teaches, as its verdict says: signals, the lane's breaker, the
        credential's cooldown, a stale lane."""
        verdict = classify(exc, now=self.clock.now())
        if self.signals is not None:
            self.signals.failure(provider.name, provider.family, lane.id, exc, verdict)
        if self.breakers is not None:
            if verdict.unhealthy:
                self.breakers.failure(lane.id)
            else:
                self.breakers.release_trial(lane.id)
        if self.backends is not None:
            if verdict.auth_failure:
                await self.backends.credential_refused(lane.backend, exc)
            elif verdict.stale_lane:
                self.backends.lane_stale(lane.id)
        return verdict

    def _broke_mid_stream(self, lane: Lane, exc: LanewayError) -> None:
        """A stream the client already reads broke: it cannot fail over, but it counts against
        the lane's breaker like a failed call (a backend that breaks every stream after its first
        byte must leave rotation)."""
        if self.breakers is not None and classify(exc, now=self.clock.now()).unhealthy:
            self.breakers.failure(lane.id)

    # -- the two shapes of an answer ---------------------------------------------------------

    async def send(
        self, op: Operation, body: dict[str, Any], raw: bytes, info: RequestInfo | None = None
    ) -> Served[Reply]:
        call = _CALLS[op]

        async def attempt(
            provider: Provider, lane: Lane, c: Call, slot: Slot | None, called_at: float
        ) -> Reply:
            try:
                reply = await call(provider, c)
            finally:
                if slot is not None:
                    slot.release()
            if self.signals is not None:
                elapsed = self.clock.monotonic() - called_at
                self.signals.success(provider.name, provider.family, lane.id, reply.headers, elapsed)
            return reply

        info = info or RequestInfo()
        served = await self._try(op, body, raw, info, attempt)
        self._record_usage(info, body, served.lane, served.attempts, served.result.usage, streamed=False)
        return served

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
        if self.usage is None:
            return
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
            )
        )

    async def stream(
        self, op: Operation, body: dict[str, Any], raw: bytes, info: RequestInfo | None = None
    ) -> Served[ReplyStream]:
        """Returns once a lane's stream is established and its first frame read: failures before
        the first byte reached the client have been failed over here already."""
        start = _STREAMS[op]
        info = info or RequestInfo()

        async def attempt(
            provider: Provider, lane: Lane, c: Call, slot: Slot | None, called_at: float
        ) -> ReplyStream:
            config = self.backends.config(provider.name) if self.backends else None
            held = slot if (slot is not None and config is not None and config.stream_holds_slot) else None
            try:
                stream, first = await open_stream(start(provider, c))
            finally:
                if slot is not None and held is None:
                    slot.release()  # established: the slot goes back, unless the backend wants it held
            observed = ObservedStream(stream, first, provider, lane.id, held)
            observed.attribution = self._attribution(info, body, lane.id, 0)
            observed.on_failure = lambda exc: self._broke_mid_stream(lane, exc)
            if self.signals is not None:
                observed.observe(self.signals, self.clock, called_at)
            return observed

        served = await self._try(op, body, raw, info, attempt)
        result = served.result
        if isinstance(result, ObservedStream) and result.attribution is not None:
            result.attribution = replace(result.attribution, attempt=served.attempts)
        if isinstance(result, ObservedStream):
            lane, attempts = served.lane, served.attempts
            result.on_end = lambda usage: self._record_usage(info, body, lane, attempts, usage, streamed=True)
        return served


def _prompt(body: dict[str, Any]) -> Any:
    return body.get("messages") or body.get("prompt") or body.get("input")


_CALLS: dict[Operation, Callable[[Provider, Call], Awaitable[Reply]]] = {
    Operation.CHAT: lambda p, c: p.chat(c),
    Operation.COMPLETION: lambda p, c: p.complete(c),
    Operation.EMBEDDING: lambda p, c: p.embed(c),
}
_STREAMS: dict[Operation, Callable[[Provider, Call], Awaitable[ReplyStream]]] = {
    Operation.CHAT: lambda p, c: p.stream_chat(c),
    Operation.COMPLETION: lambda p, c: p.stream_complete(c),
}
