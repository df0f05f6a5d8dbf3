"""Ollama's API, served: ``/api/chat``, ``/api/generate``, ``/api/embed`` and ``/api/embeddings``
on every lane laneway has (cloud, local, published), and ``/api/tags``, ``/api/show``, ``/api/ps``
and ``/api/version`` describing them, so that any Ollama client (the ollama libraries and CLI,
Open WebUI) can use laneway as "an Ollama".

Each request is admitted and served by ``Inbound`` like any other (keys, pools, ranking,
failover, signals, usage and attribution are the router's); ``laneway.dialects.ollama`` translates
the bodies both ways. The model-management endpoints (pull, push, create, copy, delete, blobs)
answer 501: laneway routes to models, it does not store them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from laneway.api.inbound import CLIENT_GONE, Inbound, served_headers
from laneway.api.streaming import ReplyStreamResponse
from laneway.api.wire import SHAPES, validate
from laneway.dialects.ollama import request as ollama_request
from laneway.dialects.ollama import response as ollama_response
from laneway.dialects.ollama.errors import OLLAMA, error_line
from laneway.dialects.ollama.models import running, show, tag
from laneway.dialects.ollama.request import Translated, is_load, model_of
from laneway.dialects.ollama.response import Timing, rfc3339_nano
from laneway.dialects.ollama.stream import MEDIA_TYPE, Lines, NdjsonStream
from laneway.errors import LanewayError, ModelNotFound
from laneway.gateway import Gateway
from laneway.inventory.lanes import Lane
from laneway.operations import LANE_TYPES
from laneway.providers.base import OPENAI, Reply
from laneway.providers.openai_format import protocol_guard
from laneway.routing.resolve import OutOfRotation

# What /api/version says: a version every Ollama client accepts (Open WebUI and the ollama CLI
# check it before they use the newer endpoints).
VERSION = "0.12.6"
TRANSLATE: dict[str, Callable[[Mapping[str, Any]], Translated]] = {
    "chat": ollama_request.chat_request,
    "generate": ollama_request.generate_request,
    "embed": ollama_request.embed_request,
    "embeddings": ollama_request.embeddings_request,
}
MANAGEMENT = (
    ("/api/pull", "POST"),
    ("/api/push", "POST"),
    ("/api/create", "POST"),
    ("/api/copy", "POST"),
    ("/api/delete", "DELETE"),
    ("/api/blobs/{digest}", "POST"),
    ("/api/blobs/{digest}", "HEAD"),
)


class NotManaged(LanewayError):
    """A model-management call: laneway routes to the models its backends have, it keeps none."""

    status = 501
    error_type = "invalid_request_error"
    code = "not_supported"


def json_response(body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


class OllamaRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.inbound = Inbound(gateway, OLLAMA)

    def routes(self) -> list[Route]:
        serving = [
            Route(f"/api/{path}", self._endpoint(path), methods=["POST"], name=f"ollama-{path}")
            for path in TRANSLATE
        ]
        return [
            *serving,
            Route("/api/tags", self.tags, methods=["GET"]),
            Route("/api/ps", self.ps, methods=["GET"]),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/version", self.version, methods=["GET"]),
            *(Route(path, self.not_managed, methods=[method]) for path, method in MANAGEMENT),
        ]

    def caller(self, request: Request) -> str:
        """The key checked, errors in Ollama's shape, and the access log told the dialect."""
        return self.inbound.caller(request)

    def _endpoint(self, path: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self._serve(request, path)

        return endpoint

    # --- what a name is served by ---------------------------------------------------------------

    def lanes_of(self, name: str) -> list[Lane]:
        """The lanes the router would consider for ``name`` (a model, a route, ``backend/model``
        or a lane id), of any type, those out of rotation included."""
        resolver = self.gateway.router.resolver
        found: dict[str, Lane] = {}
        for lane_type in sorted(LANE_TYPES):
            try:
                found.update((c.lane.id, c.lane) for c in resolver.resolve(name, lane_type))
            except OutOfRotation as exc:
                found.update((lane.id, lane) for lane in exc.lanes)
            except LanewayError:
                continue  # not this type, or not a name laneway serves
        return list(found.values())

    def known(self, name: str) -> tuple[str, list[Lane]]:
        """The name laneway serves for ``name`` and its lanes. Ollama's clients add ``:latest``
        to a name without a tag, so ``gpt-4o-mini:latest`` is ``gpt-4o-mini`` when only that
        exists; a name nothing serves is Ollama's 404."""
        lanes = self.lanes_of(name)
        if not lanes and name.endswith(":latest"):
            base = name.removesuffix(":latest")
            if lanes := self.lanes_of(base):
                return base, lanes
        if not lanes:
            raise ModelNotFound(f"model '{name}' not found", param="model")
        return name, lanes

    # --- serving --------------------------------------------------------------------------------

    async def _serve(self, request: Request, path: str) -> Response:
        inbound, clock = self.inbound, self.gateway.clock
        admitted = inbound.admit(request)
        timing = Timing(clock.monotonic())
        _, body = await inbound.read_json(request)
        asked = model_of(body)
        if is_load(path, body):
            self.known(asked)
            at, keep_alive = rfc3339_nano(clock.now()), body.get("keep_alive")
            return json_response(
                ollama_response.load_response(path, model=asked, at=at, keep_alive=keep_alive)
            )
        translated = TRANSLATE[path](body)
        served_name, _ = self.known(asked)
        translated.body["model"] = served_name
        validate(SHAPES[translated.op], translated.body)  # what the translation cannot have checked
        served = await inbound.serve(
            request, admitted, translated.op, translated.body, b"", stream=translated.stream
        )
        if served is None:
            return CLIENT_GONE
        headers = served_headers(served, admitted.request_id)
        result, backend = served.result, served.lane.backend
        if result.dialect != OPENAI:
            raise RuntimeError(f"a {result.dialect} answer to a request sent in the OpenAI format")
        if isinstance(result, Reply):
            with protocol_guard(backend, "answer"):
                answer = self._answer(path, orjson.loads(result.body), asked, timing)
            return json_response(answer, headers)
        lines = Lines(path="chat" if path == "chat" else "generate", model=asked, clock=clock, timing=timing)
        return ReplyStreamResponse(  # type: ignore[return-value]
            NdjsonStream(result, lines, backend=backend),
            headers,
            show_lane=admitted.show_lane,
            media_type=MEDIA_TYPE,
            error_frame=error_line,
        )

    def _answer(self, path: str, data: Any, model: str, timing: Timing) -> dict[str, Any]:
        clock = self.gateway.clock
        durations, at = timing.durations(clock.monotonic()), rfc3339_nano(clock.now())
        if not isinstance(data, dict):
            raise TypeError("the answer is not a JSON object")
        if path == "chat":
            return ollama_response.chat_response(data, model=model, at=at, timing=durations)
        if path == "generate":
            return ollama_response.generate_response(data, model=model, at=at, timing=durations)
        if path == "embed":
            return ollama_response.embed_response(data, model=model, timing=durations)
        return ollama_response.embeddings_response(data)

    # --- describing -----------------------------------------------------------------------------

    async def tags(self, request: Request) -> Response:
        """Every model a lane can serve now, then every route (as ``/v1/models`` lists them)."""
        self.caller(request)
        gw, now = self.gateway, self.gateway.clock.now()
        models = []
        for model in gw.inventory.models():
            lanes = [lane for lane in gw.inventory.by_model(model) if lane.routable]
            if lanes:
                models.append(tag(model, lanes, now=now))
        for name, selectors in gw.router.resolver.routes.items():
            lanes = [lane for lane in self.lanes_of(name) if lane.routable]
            models.append(tag(name, lanes, now=now, selectors=[str(s) for s in selectors]))
        return json_response({"models": models})

    async def ps(self, request: Request) -> Response:
        """The models a backend has in memory now (the lanes discovery found loaded)."""
        self.caller(request)
        inventory = self.gateway.inventory
        models = []
        for model in inventory.models():
            lanes = [lane for lane in inventory.by_model(model) if lane.loaded and lane.routable]
            if lanes:
                models.append(running(model, lanes))
        return json_response({"models": models})

    async def show(self, request: Request) -> Response:
        self.caller(request)
        _, body = await self.inbound.read_json(request)
        name, lanes = self.known(model_of(body))
        route = self.gateway.router.resolver.routes.get(name)
        selectors = None if route is None else [str(s) for s in route]
        return json_response(show(name, lanes, now=self.gateway.clock.now(), selectors=selectors))

    async def version(self, request: Request) -> Response:
        """Unauthenticated, as Ollama's: a client checks it before it has sent anything else."""
        self.inbound.speak(request)
        return json_response({"version": VERSION})

    async def not_managed(self, request: Request) -> Response:
        self.caller(request)
        raise NotManaged(
            f"laneway does not manage models ({request.url.path} is not served): it routes to the "
            "models its backends already have. Add models on the backends themselves."
        )
