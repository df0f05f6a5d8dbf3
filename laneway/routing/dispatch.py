"""Dispatch: try a request's candidate lanes in order until one serves it.

For now every retryable error moves on to the next candidate and the others end the request;
ranking, pools, breakers and a failover budget come with the pools-and-routing work.

Two inventory rules are enforced here: a backend's allow/deny policy is checked again before a
lane is called (fail closed), and a name no lane serves may trigger one refresh of the local
backends (``on_miss``) before the client gets its 404.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from laneway.clock import Clock, SystemClock
from laneway.errors import LanewayError, ModelNotFound, NoLaneAvailable, PermissionDenied, UpstreamError
from laneway.inventory.lanes import Lane
from laneway.providers.base import Call, Provider, Reply, ReplyStream
from laneway.routing.resolve import Candidate, Resolver
from laneway.signals.store import Signals

log = logging.getLogger("laneway.routing")
T = TypeVar("T")


class Operation(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"


@dataclass(slots=True)
class Served(Generic[T]):
    """What came back, and who served it."""

    result: T
    lane: Lane
    attempts: int


class Router:
    def __init__(
        self,
        resolver: Resolver,
        providers: Mapping[str, Provider],
        *,
        allows: Callable[[str, str], bool] | None = None,
        on_miss: Callable[[], Awaitable[bool]] | None = None,
        signals: Signals | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.resolver = resolver
        self.providers = providers
        self.signals = signals  # told the outcome, headers and timing of every attempt
        self.clock = clock or SystemClock()
        self.allows = allows  # (backend, model) -> the backend's policy lets it through
        self.on_miss = on_miss  # refresh what might serve an unknown name; False if it did not run

    async def candidates(self, name: str, lane_type: str) -> tuple[Candidate, ...]:
        try:
            found = self.resolver.resolve(name, lane_type)
        except ModelNotFound:
            if self.on_miss is None or not await self.on_miss():
                raise
            found = self.resolver.resolve(name, lane_type)
        if self.allows is not None:
            allowed = tuple(c for c in found if self.allows(c.lane.backend, c.lane.model))
            if not allowed:
                lane = found[0].lane
                raise PermissionDenied(
                    f"'{name}' is served only by lanes the backends' model policy excludes "
                    f"(e.g. '{lane.model}' on '{lane.backend}')",
                    param="model",
                )
            found = allowed
        return found

    def _call(self, candidate: Candidate, body: dict[str, Any], raw: bytes) -> Call:
        model = candidate.lane.model
        if body.get("model") == model:
            return Call(model=model, body=body, raw=raw, effort=candidate.effort)
        return Call(model=model, body={**body, "model": model}, effort=candidate.effort)

    async def _try(
        self,
        op: Operation,
        body: dict[str, Any],
        raw: bytes,
        send: Callable[[Provider, Call], Awaitable[T]],
        observe: Callable[[Provider, Lane, T, float], T],
    ) -> Served[T]:
        candidates = await self.candidates(body["model"], op.value)
        last: UpstreamError | None = None
        for attempt, candidate in enumerate(candidates, start=1):
            provider = self.providers.get(candidate.lane.backend)
            if provider is None:  # the backend was removed since the lanes were read
                continue
            started = self.clock.monotonic()
            try:
                result = await send(provider, self._call(candidate, body, raw))
            except UpstreamError as exc:
                if self.signals is not None:
                    self.signals.failure(provider.name, provider.family, candidate.lane.id, exc)
                if not exc.retryable or attempt == len(candidates):
                    raise
                log.warning(
                    "attempt failed, trying next lane",
                    extra={"lane": candidate.lane.id, "attempt": attempt, "error": exc.message},
                )
                last = exc
                continue
            return Served(observe(provider, candidate.lane, result, started), candidate.lane, attempt)
        if last is None:  # every candidate's backend went away under us
            raise NoLaneAvailable(f"No backend is left to serve '{body['model']}'; try again shortly")
        raise last

    def _observe_reply(self, provider: Provider, lane: Lane, reply: Reply, started: float) -> Reply:
        if self.signals is not None:
            elapsed = self.clock.monotonic() - started
            self.signals.success(provider.name, provider.family, lane.id, reply.headers, elapsed)
        return reply

    def _observe_stream(
        self, provider: Provider, lane: Lane, stream: ReplyStream, started: float
    ) -> ReplyStream:
        if self.signals is None:
            return stream
        self.signals.success(provider.name, provider.family, lane.id, stream.headers, None)
        return ObservedStream(stream, self.signals, self.clock, provider, lane.id, started)

    async def send(self, op: Operation, body: dict[str, Any], raw: bytes) -> Served[Reply]:
        observe = self._observe_reply
        if op is Operation.CHAT:
            return await self._try(op, body, raw, lambda p, c: p.chat(c), observe)
        if op is Operation.COMPLETION:
            return await self._try(op, body, raw, lambda p, c: p.complete(c), observe)
        return await self._try(op, body, raw, lambda p, c: p.embed(c), observe)

    async def stream(self, op: Operation, body: dict[str, Any], raw: bytes) -> Served[ReplyStream]:
        """Returns once a lane's stream is established: failures before the first byte reached
        the client have been failed over here already."""
        observe = self._observe_stream
        if op is Operation.CHAT:
            return await self._try(op, body, raw, lambda p, c: p.stream_chat(c), observe)
        return await self._try(op, body, raw, lambda p, c: p.stream_complete(c), observe)


class ObservedStream:
    """A ``ReplyStream`` that tells the signals its time to first byte and, if it runs to its
    end, its total time (both from the start of the attempt); a stream that breaks counts as a
    failure of its backend."""

    def __init__(
        self,
        inner: ReplyStream,
        signals: Signals,
        clock: Clock,
        provider: Provider,
        lane: str,
        started: float,
    ) -> None:
        self.inner = inner
        self.headers = inner.headers
        self._signals, self._clock, self._provider, self._lane, self._started = (
            signals,
            clock,
            provider,
            lane,
            started,
        )

    async def _frames(self) -> AsyncIterator[bytes]:
        signals, backend, lane = self._signals, self._provider.name, self._lane
        first = True
        try:
            async for frame in self.inner:
                if first:
                    first = False
                    signals.first_byte(backend, lane, self._clock.monotonic() - self._started)
                yield frame
        except LanewayError as exc:
            signals.failure(backend, self._provider.family, lane, exc)
            raise
        signals.stream_ended(backend, lane, self._clock.monotonic() - self._started)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames()

    async def aclose(self) -> None:
        await self.inner.aclose()
