"""The OpenAI-compatible surface: a route per operation at its OpenAI path (/v1/chat/completions,
/v1/completions, /v1/embeddings: the operation map's), and /v1/models."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from laneway.api.inbound import CLIENT_GONE, Inbound, served_headers
from laneway.api.streaming import ReplyStreamResponse
from laneway.api.wire import SHAPES, validate
from laneway.gateway import Gateway
from laneway.operations import OPERATIONS, Operation
from laneway.providers.base import Reply


class OpenAIRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.inbound = Inbound(gateway)

    async def _handle(self, request: Request, op: Operation, shape: type[BaseModel]) -> Response:
        inbound = self.inbound
        admitted = inbound.admit(request)
        raw, body = await inbound.read_json(request)
        validate(shape, body)
        served = await inbound.serve(request, admitted, op, body, raw, stream=bool(body.get("stream")))
        if served is None:
            return CLIENT_GONE
        headers = served_headers(served, admitted.request_id)
        if isinstance(served.result, Reply):
            return Response(served.result.body, media_type="application/json", headers=headers)
        return ReplyStreamResponse(served.result, headers, show_lane=admitted.show_lane)  # type: ignore[return-value]

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
        self.inbound.caller(request)
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
