"""The ASGI application."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from laneway.api.access import AccessMiddleware
from laneway.api.admin_routes import AdminRoutes
from laneway.api.anthropic_routes import AnthropicRoutes
from laneway.api.edge import EdgeStats
from laneway.api.errors import PREFIXES, http_error_handler, laneway_error_handler, unexpected_error_handler
from laneway.api.metrics import Metrics
from laneway.api.ollama_routes import OllamaRoutes
from laneway.api.openai_routes import OpenAIRoutes
from laneway.api.publisher_routes import PublisherRoutes
from laneway.api.responses_routes import ResponsesRoutes
from laneway.api.usage_routes import usage_routes
from laneway.dialects.anthropic.errors import ANTHROPIC
from laneway.dialects.ollama.errors import OLLAMA
from laneway.errors import LanewayError
from laneway.gateway import Gateway
from laneway.inventory.refresher import BackendStatus
from laneway.pools.shared import SharedPool


def backend_state(st: BackendStatus) -> str:
    """A backend's state in words of laneway's own (no upstream text: /readyz is unauthenticated)."""
    if st.unset_key_env is not None:
        return "api_key_env_unset"
    if st.cooldown_until is not None:
        return "credentials_refused"
    if st.failing_since is not None:
        return "unreachable"
    return "ok" if st.lanes else "no_lanes"


def readiness(gateway: Gateway) -> dict[str, Any]:
    """Ready: started, and at least one lane can take requests. Why not, in laneway's words."""
    statuses = gateway.reconciler.statuses()
    backends = {
        st.name: {"state": backend_state(st), "lanes": st.lanes, "last_refresh": st.last_refresh}
        for st in statuses
    }
    routable = sum(1 for lane in gateway.inventory.lanes() if lane.routable)
    reason = None
    if gateway.draining:  # first, so a load balancer stops sending here at once
        reason = "draining"
    elif not gateway.ready:
        reason = "starting"
    elif not routable:
        failing = sum(1 for b in backends.values() if b["state"] != "ok")
        reason = (
            f"no lane can take requests: {failing} of {len(backends)} backends are not serving"
            if backends
            else "no lane can take requests: no backend is declared and no model is published"
        )
    # Serving, but not as one with the cluster: the runtime store (Redis) could not be reached at
    # the last renewal. Still ready (a load balancer keeps sending: this replica serves from what
    # it knows), and said so in laneway's words (/readyz is unauthenticated; the log has the rest).
    why = ["runtime store unreachable"] if gateway.replicas.unreachable else []
    if any(isinstance(pool, SharedPool) and pool.alone for pool in gateway.pools.pools()):
        why.append("pools serve from this replica's share of their slots")
    degraded = "; ".join(why) or None
    return {
        "ready": reason is None,
        "reason": reason,
        "degraded": degraded,
        "lanes": routable,
        "backends": backends,
    }


def build_app(gateway: Gateway, *, edge: EdgeStats | None = None) -> Starlette:
    """The app of an open ``gateway`` (``Gateway.open``); whoever opened it closes it. ``laneway
    serve`` opens it itself first, so a start-up error is one clear line; a server in a thread of
    its own serves a ``GatewayApp``, which opens it on that server's loop."""
    api = OpenAIRoutes(gateway)
    anthropic = AnthropicRoutes(gateway, models_fallback=api.models)
    ollama = OllamaRoutes(gateway)
    admin = AdminRoutes(gateway)
    publishers = PublisherRoutes(gateway)
    metrics = Metrics(gateway, edge)  # its own registry, read at scrape time (see laneway.api.metrics)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(request: Request) -> Response:
        body = readiness(gateway)
        return Response(
            orjson.dumps(body), status_code=200 if body["ready"] else 503, media_type="application/json"
        )

    app = Starlette(
        routes=[
            *anthropic.routes(),  # first: its GET /v1/models answers Anthropic's clients, else api's
            *api.routes(),
            *ResponsesRoutes(gateway).routes(),
            *ollama.routes(),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics.endpoint, methods=["GET"]),
            *admin.routes(),
            *publishers.routes(),
            *usage_routes(gateway),
        ],
        # Around everything but starlette's error middleware: every request is counted and logged
        # once, its errors (the handlers below) and a client that left included.
        middleware=[
            Middleware(
                AccessMiddleware,
                clock=gateway.clock,
                metrics=metrics.requests,
                log_lines=gateway.settings.server.access_log,
            )
        ],
        exception_handlers={
            LanewayError: laneway_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
    )
    # Paths no route serves answer in the dialect of their prefix (a 404 under /api/ is Ollama's).
    setattr(app.state, PREFIXES, (("/v1/messages", ANTHROPIC), ("/api/", OLLAMA)))
    return app


class GatewayApp:
    """An ASGI app that opens its gateway when its server starts, on that server's own event loop
    (``opener``: e.g. ``lambda: Gateway.open(settings)``), serves ``build_app`` of it, and closes
    it when the server stops: for a server in a thread of its own (tests, an embedding program)."""

    def __init__(self, opener: Callable[[], Awaitable[Gateway]], *, edge: EdgeStats | None = None) -> None:
        self._opener = opener
        self._edge = edge
        self._open: tuple[Gateway, Starlette] | None = None

    @property
    def gateway(self) -> Gateway:
        if self._open is None:
            raise RuntimeError("the gateway opens when the app's server starts")
        return self._open[0]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._open is None:
            raise RuntimeError("the gateway opens when the app's server starts")
        await self._open[1](scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    gateway = await self._opener()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self._open = (gateway, build_app(gateway, edge=self._edge))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._open is not None:
                    await self._open[0].aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
