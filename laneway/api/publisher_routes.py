"""The publisher endpoints (docs/publishers.md): where ``laneway publish`` dials in.

    POST   /v1/publishers/register                                   the sticky upsert → session id
    GET    /v1/publishers/sessions/{session_id}/control              SSE: hello, task, wake, cancel, ping
    POST   /v1/publishers/sessions/{session_id}/heartbeat            {"state": "active"|"hibernating"|...}
    POST   /v1/publishers/sessions/{session_id}/tasks/{task_id}/chunks   {"seq", "chunks": [...]}
    POST   /v1/publishers/sessions/{session_id}/tasks/{task_id}/result   {"status": 200, "body"} | {"error"}
    DELETE /v1/publishers/sessions/{session_id}                      stopping: lanes inactive at once
    GET    /admin/publishers                                         sessions, lanes, tasks (admin key)

Every publisher endpoint needs a publisher token (not a client key) and answers errors in the
OpenAI shape; the token is checked before the body is read. Bodies and answers are the messages
of ``laneway.publishing.protocol``; a body that is not one is refused (400) before its session or
task is looked at.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from laneway.api.inbound import read_body
from laneway.api.wire import parse_body
from laneway.auth.tokens import PublisherGrant
from laneway.clock import within
from laneway.gateway import Gateway
from laneway.publishing.protocol import (
    Accepted,
    Acknowledged,
    Chunks,
    EventName,
    Heartbeat,
    Message,
    Ping,
    Register,
    Result,
    read,
)
from laneway.sse import encode
from laneway.virtual import Fleet
from laneway.virtual.relay import ControlChannel

PING = encode(Ping().wire(), event=EventName.PING)
M = TypeVar("M", bound=Message)


def _json(message: Message) -> Response:
    return Response(message.wire(), media_type="application/json")


class PublisherRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[Route]:
        base = "/v1/publishers/sessions/{session_id}"
        return [
            Route("/v1/publishers/register", self.register, methods=["POST"]),
            Route(base + "/control", self.control, methods=["GET"]),
            Route(base + "/heartbeat", self.heartbeat, methods=["POST"]),
            Route(base + "/tasks/{task_id}/chunks", self.chunks, methods=["POST"]),
            Route(base + "/tasks/{task_id}/result", self.result, methods=["POST"]),
            Route(base, self.unregister, methods=["DELETE"]),
            Route("/admin/publishers", self.admin, methods=["GET"]),
        ]

    def _fleet(self) -> Fleet:
        return self.gateway.fleet

    def _caller(self, request: Request) -> tuple[Fleet, PublisherGrant]:
        fleet = self._fleet()
        return fleet, fleet.tokens.identify(request.headers.get("authorization"))

    async def _body(self, request: Request, message: type[M], *, optional: bool = False) -> M:
        """The request's body as a protocol message (400 naming the field that is wrong)."""
        raw = await read_body(request, self.gateway.settings.server.max_body_bytes)
        data: Any = {} if optional and not raw.strip() else parse_body(raw)
        return read(message, data)

    async def register(self, request: Request) -> Response:
        fleet, grant = self._caller(request)
        return _json(await fleet.sessions.register(grant, await self._body(request, Register)))

    async def heartbeat(self, request: Request) -> Response:
        fleet, grant = self._caller(request)
        beat = await self._body(request, Heartbeat, optional=True)
        return _json(await fleet.sessions.heartbeat(grant, request.path_params["session_id"], beat))

    async def chunks(self, request: Request) -> Response:
        fleet, grant = self._caller(request)
        p = request.path_params
        post = await self._body(request, Chunks)
        accepted = await fleet.sessions.chunks(grant, p["session_id"], p["task_id"], post)
        return _json(Accepted(accepted=accepted))

    async def result(self, request: Request) -> Response:
        fleet, grant = self._caller(request)
        p = request.path_params
        await fleet.sessions.result(grant, p["session_id"], p["task_id"], await self._body(request, Result))
        return _json(Acknowledged())

    async def unregister(self, request: Request) -> Response:
        fleet, grant = self._caller(request)
        await fleet.sessions.unregister(grant, request.path_params["session_id"])
        return _json(Acknowledged())

    async def control(self, request: Request) -> Response:
        fleet, grant = self._caller(request)
        channel = await fleet.sessions.open_control(grant, request.path_params["session_id"])
        return StreamingResponse(
            self._events(fleet, channel),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _events(self, fleet: Fleet, channel: ControlChannel) -> AsyncIterator[bytes]:
        """The control stream: events as the fleet queues them, a ping when there were none for
        ``ping_interval``. Ends when the channel is closed (replaced, unregistered, shutting down);
        however it ends, the session is told (inactive at once, unless replaced)."""
        clock, interval = fleet.clock, fleet.settings.ping_interval
        try:
            while True:
                try:
                    frame = await within(clock, interval, channel.events.get())
                except TimeoutError:
                    yield PING
                    continue
                if frame is None:
                    return
                yield frame
        finally:
            fleet.sessions.close_control(channel)

    async def admin(self, request: Request) -> Response:
        gw = self.gateway
        gw.keys.require_admin(request.headers.get("authorization"), request.headers.get("x-api-key"))
        fleet = self._fleet()
        body = {"now": gw.clock.now(), "publishers": fleet.snapshot(), "pending_tasks": fleet.pending()}
        return Response(orjson.dumps(body), media_type="application/json")
