"""Dispatch: try a request's candidate lanes in order until one serves it.

For now every retryable error moves on to the next candidate and the others end the request;
ranking, pools, breakers and a failover budget come with the pools-and-routing work.

Two inventory rules are enforced here: a backend's allow/deny policy is checked again before a
lane is called (fail closed), and a name no lane serves may trigger one refresh of the local
backends (``on_miss``) before the client gets its 404.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from laneway.errors import ModelNotFound, NoLaneAvailable, PermissionDenied, UpstreamError
from laneway.inventory.lanes import Lane
from laneway.providers.base import Call, Provider, Reply, ReplyStream
from laneway.routing.resolve import Candidate, Resolver

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
    ) -> None:
        self.resolver = resolver
        self.providers = providers
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
    ) -> Served[T]:
        candidates = await self.candidates(body["model"], op.value)
        last: UpstreamError | None = None
        for attempt, candidate in enumerate(candidates, start=1):
            provider = self.providers.get(candidate.lane.backend)
            if provider is None:  # the backend was removed since the lanes were read
                continue
            try:
                result = await send(provider, self._call(candidate, body, raw))
            except UpstreamError as exc:
                if not exc.retryable or attempt == len(candidates):
                    raise
                log.warning(
                    "attempt failed, trying next lane",
                    extra={"lane": candidate.lane.id, "attempt": attempt, "error": exc.message},
                )
                last = exc
                continue
            return Served(result, candidate.lane, attempt)
        if last is None:  # every candidate's backend went away under us
            raise NoLaneAvailable(f"No backend is left to serve '{body['model']}'; try again shortly")
        raise last

    async def send(self, op: Operation, body: dict[str, Any], raw: bytes) -> Served[Reply]:
        if op is Operation.CHAT:
            return await self._try(op, body, raw, lambda p, c: p.chat(c))
        if op is Operation.COMPLETION:
            return await self._try(op, body, raw, lambda p, c: p.complete(c))
        return await self._try(op, body, raw, lambda p, c: p.embed(c))

    async def stream(self, op: Operation, body: dict[str, Any], raw: bytes) -> Served[ReplyStream]:
        """Returns once a lane's stream is established: failures before the first byte reached
        the client have been failed over here already."""
        if op is Operation.CHAT:
            return await self._try(op, body, raw, lambda p, c: p.stream_chat(c))
        return await self._try(op, body, raw, lambda p, c: p.stream_complete(c))
