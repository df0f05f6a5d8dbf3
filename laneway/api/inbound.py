"""What every inbound dialect shares: admitting a request (its key, who it is for, its record)
and having the router serve it.

A dialect's routes (OpenAI's, Anthropic's, the Responses API's, Ollama's) differ only in the
shape of what comes in and goes out. Each one admits the request here, translates its body to the
OpenAI format the router and the providers speak (``providers.base``: keeping the client's own
body as ``Native`` when some family speaks that dialect itself), serves it here, and translates
the answer back. Pools, ranking, failover, signals, usage and attribution are the router's, so
they are the same whichever door a request came in by.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from laneway.api.access import request_record
from laneway.api.errors import DIALECT, SHOW_LANE, Dialect
from laneway.api.wire import parse_body
from laneway.errors import ClientGone, PayloadTooLarge
from laneway.gateway import Gateway
from laneway.operations import OPERATIONS, Operation
from laneway.providers.base import Native, Reply, ReplyStream
from laneway.routing.dispatch import Served
from laneway.routing.failover import RequestInfo

T = TypeVar("T")

# What a request whose client has left "answers": nobody reads it (nginx's 499, for the access log).
CLIENT_GONE = Response(status_code=499)


def request_id(request: Request) -> str:
    """The access middleware's id for this request (the client's x-request-id or a new one)."""
    record = request_record(request)
    if record is not None:
        return record.request_id
    rid = request.headers.get("x-request-id") or os.urandom(12).hex()
    request.scope.setdefault("state", {})["request_id"] = rid
    return rid


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"The request body is {length} bytes; this gateway accepts at most {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The request body is over {limit} bytes, the most laneway accepts")
            chunks.append(chunk)
    except ClientDisconnect:
        # Closed mid-upload (or cut by the edge for a body too slow): not a server error.
        raise ClientGone("The client closed the connection before its request body arrived") from None
    return b"".join(chunks)


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T | None:
    """Await ``work`` unless the client disconnects first; then cancel it (None). Starlette does not
    cancel a handler when its client leaves, so without this a request queued for a pool slot, or
    waiting on a slow upstream, would run on for nobody: the queue keeps it and the upstream
    generates an answer nobody reads. The body has been read, so the next ``receive`` returns
    only at the disconnect."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        return None
    finally:
        watcher.cancel()


def served_headers(served: Served[Any], rid: str) -> dict[str, str]:
    """Who served the request; ``x-laneway-emulated`` names what the lane's family emulated for
    it (``json_schema``, ``json_object``, ``forced_tool``: see ``routing.needs``), whole answers
    and streams alike, so a client can tell an emulated JSON mode from a native one."""
    lane = served.lane
    headers = {
        "x-laneway-backend": lane.backend,
        "x-laneway-model": lane.model,
        "x-laneway-lane": lane.id,
        "x-laneway-attempts": str(served.attempts),
        "x-request-id": rid,
    }
    if served.emulated:
        headers["x-laneway-emulated"] = ",".join(served.emulated)
    return headers


@dataclass(slots=True)
class Admitted:
    """A request laneway has accepted: whose it is (``info``), its id, whether its errors may
    name the lane."""

    info: RequestInfo
    request_id: str
    show_lane: bool


class Inbound:
    """Admission and serving for the routes of one dialect (``dialect``: how its errors look;
    None for OpenAI's, the default shape). ``name``: the dialect the access log says (default
    the Dialect's name, else "openai")."""

    def __init__(self, gateway: Gateway, dialect: Dialect | None = None, *, name: str | None = None) -> None:
        self.gateway = gateway
        self.dialect = dialect
        self.name = name or (dialect.name if dialect is not None else "openai")
        self.limit = gateway.settings.server.max_body_bytes
        self.show_lane = gateway.settings.server.show_lane_in_errors

    def speak(self, request: Request) -> None:
        """From here on, this request's errors are in this dialect's shape, and its access line
        names the dialect."""
        if self.dialect is not None:
            request.scope[DIALECT] = self.dialect
        record = request_record(request)
        if record is not None:
            record.dialect = self.name

    def admit(self, request: Request) -> Admitted:
        """The request's key checked (Bearer or ``x-api-key``), and who it is for."""
        self.speak(request)
        rid = request_id(request)
        headers = request.headers
        who = self.gateway.keys.identify(
            headers.get("authorization"),
            headers.get("x-api-key"),
            sub_caller=headers.get("x-laneway-caller"),
            priority=headers.get("x-laneway-priority"),
        )
        show_lane = who.admin or self.show_lane
        if show_lane:
            request.scope[SHOW_LANE] = True
        info = RequestInfo(
            who.caller,
            rid,
            headers.get("x-laneway-run-id") or None,
            who.priority,
            published_lanes=who.published_lanes,
            record=request_record(request),
        )
        return Admitted(info, rid, show_lane)

    def caller(self, request: Request) -> str:
        """Only the key checked, for the routes that serve no model call (model lists)."""
        self.speak(request)
        headers = request.headers
        return self.gateway.keys.caller_for(headers.get("authorization"), headers.get("x-api-key"))

    async def read_json(self, request: Request) -> tuple[bytes, dict[str, Any]]:
        """The body as sent, and parsed (an object, or a 400 that says what is wrong)."""
        raw = await read_body(request, self.limit)
        return raw, parse_body(raw)

    async def serve(
        self,
        request: Request,
        admitted: Admitted,
        op: Operation,
        body: dict[str, Any],
        raw: bytes,
        *,
        stream: bool,
        native: Native | None = None,
    ) -> Served[Reply] | Served[ReplyStream] | None:
        """Serve ``body`` (OpenAI's format; ``raw`` its bytes as the client sent them, or b"" when
        it was translated: a lane then serialises the body itself, only if it sends it) by the
        router, whole or streamed; None when the client left first. ``native``: the request in the
        client's own dialect, for lanes that speak it."""
        info = admitted.info if native is None else replace(admitted.info, native=native)
        streamed = stream and OPERATIONS[op].streams
        if info.record is not None:
            record = info.record
            record.caller, record.operation = info.caller, op.value
            record.requested, record.streamed = str(body.get("model")), streamed
        router = self.gateway.router
        if streamed:
            return await unless_client_leaves(request, router.stream(op, body, raw, info))
        return await unless_client_leaves(request, router.send(op, body, raw, info))
