"""The ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from laneway.api.admin_routes import AdminRoutes
from laneway.api.errors import http_error_handler, laneway_error_handler, unexpected_error_handler
from laneway.api.metrics import Metrics
from laneway.api.openai_routes import OpenAIRoutes
from laneway.api.publisher_routes import PublisherRoutes
from laneway.api.usage_routes import usage_routes
from laneway.errors import LanewayError
from laneway.gateway import Gateway


def build_app(gateway: Gateway, *, manage_gateway: bool = True) -> Starlette:
    """The gateway's app. With ``manage_gateway`` its lifespan starts and stops ``gateway``;
    ``laneway serve`` starts it itself first, so a start-up error is one clear line."""
    api = OpenAIRoutes(gateway)
    admin = AdminRoutes(gateway)
    publishers = PublisherRoutes(gateway)
    metrics = Metrics(gateway)  # its own registry: open, read at scrape time (see laneway.api.metrics)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(request: Request) -> Response:
        if gateway.draining:  # at once, so a load balancer stops sending here
            return Response(b'{"ready":false,"reason":"draining"}', 503, media_type="application/json")
        reconciler = gateway.reconciler
        backends = {
            st.name: {"lanes": st.lanes, "last_refresh": st.last_refresh, "error": st.last_error}
            for st in (reconciler.statuses() if reconciler else ())
        }
        body = {"ready": gateway.ready, "lanes": len(gateway.inventory), "backends": backends}
        return Response(
            orjson.dumps(body), status_code=200 if gateway.ready else 503, media_type="application/json"
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not manage_gateway:
            yield
            return
        await gateway.start()
        try:
            yield
        finally:
            await gateway.aclose()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", api.chat, methods=["POST"]),
            Route("/v1/completions", api.completions, methods=["POST"]),
            Route("/v1/embeddings", api.embeddings, methods=["POST"]),
            Route("/v1/models", api.models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics.endpoint, methods=["GET"]),
            *admin.routes(),
            *publishers.routes(),
            *usage_routes(gateway),
        ],
        exception_handlers={
            LanewayError: laneway_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
        lifespan=lifespan,
    )
