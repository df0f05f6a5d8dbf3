"""Anthropic's Messages API on laneway: ``POST /v1/messages`` (and its ``count_tokens``),
``GET /v1/models`` in Anthropic's shape for a client that sends ``anthropic-version``, and
``GET``/``HEAD /`` and ``/api/hello`` (clients check the base URL answers before they start:
Claude Code asks ``HEAD /api/hello``).

A request is admitted and served like any chat (``api.inbound``: pools, ranking, failover,
signals, usage and its record as operation chat). It is translated to OpenAI chat for the router
(``dialects.anthropic.request``) and carries its own body as a ``Native`` request: a lane of the
anthropic family serves that as it came (``providers.anthropic_native``) and answers in
Anthropic's dialect, passed back untouched; any other lane's OpenAI answer is translated back
(``dialects.anthropic.response`` and ``.stream``). Errors are Anthropic's (``dialects.anthropic
.errors``), 529 ``overloaded_error`` for a request no lane can take now.

``count_tokens`` is exact when an anthropic-family lane serves the model (its backend counts), and
otherwise an estimate (the translated request's characters / 4), said in ``x-laneway-token-count``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from laneway.api.access import request_record
from laneway.api.errors import SHOW_LANE, error_body
from laneway.api.inbound import CLIENT_GONE, Admitted, Inbound, request_id, served_headers
from laneway.api.streaming import ReplyStreamResponse
from laneway.dialects.anthropic.errors import ANTHROPIC, error_frame, status_of
from laneway.dialects.anthropic.request import to_openai
from laneway.dialects.anthropic.response import to_message
from laneway.dialects.anthropic.shapes import CountTokensRequest, MessagesRequest, validate
from laneway.dialects.anthropic.stream import AnthropicStream
from laneway.errors import InvalidRequest, LanewayError, NoLaneAvailable
from laneway.gateway import Gateway
from laneway.operations import Operation
from laneway.providers.base import Native, Reply

log = logging.getLogger("laneway.api")

DIALECT = "anthropic"
FORWARDED = ("anthropic-beta", "anthropic-version")  # the client's headers an Anthropic lane gets
TOKEN_COUNT = "x-laneway-token-count"  # exact | estimated
Endpoint = Callable[[Request], Awaitable[Response]]


def error_response(request: Request, exc: LanewayError) -> Response:
    """``exc`` in Anthropic's shape and status (529 for overloaded), recorded like every error."""
    record = request_record(request)
    if record is not None:
        record.error = exc.error_code
    status = status_of(exc)
    headers = exc.headers()
    rid = request_id(request)
    body = ANTHROPIC.error(status, error_body(exc, show_lane=bool(request.scope.get(SHOW_LANE))))
    headers["x-request-id"] = rid
    body.setdefault("request_id", rid)
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def anthropic_errors(endpoint: Endpoint) -> Endpoint:
    """Laneway's errors from ``endpoint`` answered in Anthropic's status and shape."""

    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except LanewayError as exc:
            return error_response(request, exc)

    return wrapped


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class AnthropicRoutes:
    """``models_fallback``: the OpenAI-shaped ``GET /v1/models``, for clients that are not
    Anthropic's (no ``anthropic-version`` header)."""

    def __init__(self, gateway: Gateway, models_fallback: Endpoint) -> None:
        self.gateway = gateway
        self.inbound = Inbound(gateway, ANTHROPIC)
        self.models_fallback = models_fallback

    def routes(self) -> list[Route]:
        """Before the OpenAI routes: ``GET /v1/models`` decides by the header which shape it is."""
        return [
            Route("/v1/messages", anthropic_errors(self.messages), methods=["POST"], name="messages"),
            Route("/v1/messages/count_tokens", anthropic_errors(self.count_tokens), methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/", self.root, methods=["GET", "HEAD"]),
            # Claude Code's connectivity check (unauthenticated; any 2xx will do).
            Route("/api/hello", self.root, methods=["GET", "HEAD"]),
        ]

    async def root(self, request: Request) -> Response:
        return Response(b"laneway is running", media_type="text/plain")

    # -- messages ------------------------------------------------------------------------------

    async def messages(self, request: Request) -> Response:
        inbound = self.inbound
        admitted = self.inbound.admit(request)
        _, body = await inbound.read_json(request)
        validate(MessagesRequest, body)
        chat = to_openai(body)
        native = Native(DIALECT, body, forwarded(request.headers))
        stream = body.get("stream") is True
        served = await inbound.serve(
            request, admitted, Operation.CHAT, chat, b"", stream=stream, native=native
        )
        if served is None:
            return CLIENT_GONE
        headers = served_headers(served, admitted.request_id)
        result, stops = served.result, list(body.get("stop_sequences") or [])
        if isinstance(result, Reply):
            if result.dialect != DIALECT:
                message = to_message(orjson.loads(result.body), model=body["model"], stop_sequences=stops)
                return Response(orjson.dumps(message), media_type="application/json", headers=headers)
            return Response(result.body, media_type="application/json", headers=headers)
        frames = (
            result
            if result.dialect == DIALECT
            else AnthropicStream(result, model=body["model"], stop_sequences=stops)
        )
        return ReplyStreamResponse(  # type: ignore[return-value]
            frames, headers, show_lane=admitted.show_lane, error_frame=error_frame
        )

    # -- count_tokens --------------------------------------------------------------------------

    async def count_tokens(self, request: Request) -> Response:
        inbound = self.inbound
        admitted = self.inbound.admit(request)
        _, body = await inbound.read_json(request)
        validate(CountTokensRequest, body)
        exact = await self._exact_count(body, request.headers, admitted)
        tokens = estimate_tokens(body) if exact is None else exact
        headers = {
            TOKEN_COUNT: "estimated" if exact is None else "exact",
            "x-request-id": admitted.request_id,
        }
        return Response(
            orjson.dumps({"input_tokens": tokens}), media_type="application/json", headers=headers
        )

    async def _exact_count(
        self, body: dict[str, Any], headers: Mapping[str, str], admitted: Admitted
    ) -> int | None:
        """The count of the first anthropic-family lane that serves the model and answers;
        None when none does (a model no lane serves is the usual 404)."""
        router = self.gateway.router
        try:
            candidates = await router.candidates(body["model"], Operation.CHAT.value, admitted.info)
        except NoLaneAvailable:
            return None  # lanes serve it, none is in rotation now: an estimate still helps
        for candidate in candidates:
            lane = candidate.lane
            provider = router.attempts.providers.get(lane.backend)
            counter = getattr(provider, "count_tokens", None)
            if provider is None or provider.family != DIALECT or counter is None:
                continue
            try:
                tokens: int = await counter({**body, "model": lane.model}, forwarded(headers))
            except LanewayError as exc:
                log.warning("count_tokens failed on a lane", extra={"lane": lane.id, "error": exc.message})
                continue
            return tokens
        return None

    # -- models --------------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        """Anthropic's shape for Anthropic's clients, else the OpenAI route's answer."""
        if "anthropic-version" not in request.headers:
            return await self.models_fallback(request)
        try:
            self.inbound.caller(request)
            page = model_page(self.model_entries(), request.query_params)
        except LanewayError as exc:
            return error_response(request, exc)
        return Response(orjson.dumps(page), media_type="application/json")

    def model_entries(self) -> list[dict[str, Any]]:
        """Every model a chat lane can serve now, then every route that chats (the Messages API
        only chats: embedding models are not listed)."""
        gw = self.gateway
        entries = []
        chat = Operation.CHAT.value
        for model in gw.inventory.models():
            lanes = [ln for ln in gw.inventory.by_model(model) if ln.routable and ln.type == chat]
            if lanes:
                created = rfc3339(min(ln.observed_at for ln in lanes))
                entries.append({"type": "model", "id": model, "display_name": model, "created_at": created})
        resolver = gw.router.resolver
        for name in resolver.routes:
            try:
                resolver.resolve(name, chat)
            except LanewayError:
                continue  # no chat lane in rotation behind it now
            entries.append({"type": "model", "id": name, "display_name": name, "created_at": rfc3339(0)})
        return entries


def forwarded(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name in FORWARDED if (value := headers.get(name))}


def model_page(entries: list[dict[str, Any]], params: Mapping[str, str]) -> dict[str, Any]:
    """One page of Anthropic's model list (``limit`` 1..1000, default 20; ``after_id``/``before_id``)."""
    raw = params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise InvalidRequest("limit: Input should be an integer between 1 and 1000", param="limit")
    limit = int(raw)
    ids = [e["id"] for e in entries]
    before = params.get("before_id")
    if before in ids:  # the page just before that id
        end = ids.index(before)
        start = max(0, end - limit)
        more = start > 0
    else:
        after = params.get("after_id")
        start = ids.index(after) + 1 if after in ids else 0
        end = min(len(entries), start + limit)
        more = end < len(entries)
    data = entries[start:end]
    return {
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """A request's input tokens, estimated: the characters of its translation to OpenAI chat
    (messages and tools, as JSON) / 4, the usual rule of thumb for English text and code."""
    chat = to_openai({**body, "max_tokens": 1, "stream": False})
    size = len(orjson.dumps(chat["messages"])) + len(orjson.dumps(chat.get("tools") or []))
    return max(1, math.ceil(size / 4))
