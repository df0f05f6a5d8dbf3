"""The OpenAI-compatible surface: a route per operation at its OpenAI path (/v1/chat/completions,
/v1/completions, /v1/embeddings: the operation map's), and /v1/models."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from laneway.api.access import request_record
from laneway.api.errors import SHOW_LANE
from laneway.api.streaming import ReplyStreamResponse
from laneway.api.wire import SHAPES, parse_body, validate
from laneway.errors import ClientGone, PayloadTooLarge
from laneway.gateway import Gateway
from laneway.operations import OPERATIONS, Operation
from laneway.routing.dispatch import Served
from laneway.routing.failover import RequestInfo

T = TypeVar("T")


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


# What a request whose client has left "answers": nobody reads it (nginx's 499, for the access log).
CLIENT_GONE = Response(status_code=499)


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
    lane = served.lane
    return {
        "x-laneway-backend": lane.backend,
        "x-laneway-model": lane.model,
        "x-laneway-lane": lane.id,
        "x-laneway-attempts": str(served.attempts),
        "x-request-id": rid,
    }


class OpenAIRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.limit = gateway.settings.server.max_body_bytes
        self.show_lane = gateway.settings.server.show_lane_in_errors

    async def _handle(self, request: Request, op: Operation, shape: type[BaseModel]) -> Response:
        rid = request_id(request)
        gw = self.gateway
        headers = request.headers
        who = gw.keys.identify(
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
        raw = await read_body(request, self.limit)
        body = parse_body(raw)
        validate(shape, body)
        streamed = bool(body.get("stream")) and OPERATIONS[op].streams
        if info.record is not None:
            record = info.record
            record.caller, record.operation = who.caller, op.value
            record.requested, record.streamed = str(body.get("model")), streamed
        router = gw.router
        if streamed:
            stream = await unless_client_leaves(request, router.stream(op, body, raw, info))
            if stream is None:
                return CLIENT_GONE
            return ReplyStreamResponse(  # type: ignore[return-value]
                stream.result, served_headers(stream, rid), show_lane=show_lane
            )
        served = await unless_client_leaves(request, router.send(op, body, raw, info))
        if served is None:
            return CLIENT_GONE
        return Response(
            served.result.body, media_type="application/json", headers=served_headers(served, rid)
        )

    def routes(self) -> list[Route]:
        """A POST route per operation at its OpenAI path, then ``GET /v1/models``."""
        posts = [
            Route(spec.path, self._endpoint(op), methods=["POST"], name=op.value)
            for op, spec in OPERATIONS.items()
        ]
        return [*posts, Route("/v1/models", self.models, methods=["GET"])]

    def _endpoint(self, op: Operation) -> Callable[[Request], Awaitable[Response]]:
        shape = SHAPES[op]

        async def endpoint(request: Request) -> Response:
            return await self._handle(request, op, shape)

        return endpoint

    async def models(self, request: Request) -> Response:
        """Every model a lane can serve now, once, then every route; ``laneway`` says which lanes
        serve each. Lanes out of rotation (auth cooldown, open breaker) are not listed."""
        gw = self.gateway
        gw.keys.caller_for(request.headers.get("authorization"), request.headers.get("x-api-key"))
        data: list[dict[str, Any]] = []
        for model in gw.inventory.models():
            lanes = [ln for ln in gw.inventory.by_model(model) if ln.routable]
            if not lanes:
                continue
            data.append(
                {
                    "id": model,
                    "object": "model",
                    "created": int(min(ln.observed_at for ln in lanes)),
                    "owned_by": ",".join(sorted({ln.backend for ln in lanes})),
                    "laneway": {
                        "kind": "model",
                        "types": sorted({ln.type for ln in lanes}),
                        "backends": sorted({ln.backend for ln in lanes}),
                        "context_length": max((ln.context_length or 0 for ln in lanes), default=0) or None,
                        "capabilities": sorted(set().union(*(ln.capabilities for ln in lanes))),
                    },
                }
            )
        if gw.router is not None:
            for name, selectors in gw.router.resolver.routes.items():
                data.append(
                    {
                        "id": name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "laneway-route",
                        "laneway": {"kind": "route", "selectors": [str(s) for s in selectors]},
                    }
                )
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")
