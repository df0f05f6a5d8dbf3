"""Every error leaves the API in the caller's dialect, with the right status; never a traceback.

An error is first put in the OpenAI error shape (``error_body``); a request that came in by
another dialect's door (Anthropic's ``/v1/messages``, Ollama's ``/api/...``) has its ``Dialect``
in its scope, which reshapes it (``Dialect.error``). A path no route serves answers in the
dialect its prefix belongs to.

What a client reads is laneway's own account (``LanewayError.client_message``): what failed and
the request id to quote; which lane it was, only to admin keys or when the operator allows it
(``server.show_lane_in_errors``). What the upstream said goes to the logs and the admin views,
redacted, never to the client.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from laneway.api.access import request_record
from laneway.errors import LanewayError, NoLaneAvailable, UpstreamError, http_status

log = logging.getLogger("laneway.api")

SHOW_LANE = "laneway.show_lane"  # scope key: this request's errors may name the lane
DIALECT = "laneway.dialect"  # scope key: the Dialect this request's errors are shaped in


class Dialect(Protocol):
    """How one inbound dialect shapes an error. ``body`` is the error in the OpenAI shape
    (``{"error": {"message", "type", "param", "code", ...}}``) and ``status`` its HTTP status."""

    name: str

    def error(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        """The error as this dialect's clients expect it."""
        ...


PREFIXES = "dialect_prefixes"  # app state: ((path prefix, Dialect), ...) for paths no route took


def dialect_of(request: Request) -> Dialect | None:
    """The request's dialect: the one its route said (``DIALECT``), else its path prefix's (a 404
    under ``/api/`` is Ollama's), else None (OpenAI's)."""
    said = request.scope.get(DIALECT)
    if said is not None:
        return said  # type: ignore[no-any-return]
    path = request.url.path
    prefixes: tuple[tuple[str, Dialect], ...] = getattr(request.app.state, PREFIXES, ())
    return next((d for prefix, d in prefixes if path.startswith(prefix)), None)


def shaped(request: Request, status: int, body: dict[str, Any]) -> dict[str, Any]:
    dialect = dialect_of(request)
    return body if dialect is None else dialect.error(status, body)


def error_body(err: LanewayError, *, show_lane: bool = False) -> dict[str, Any]:
    """The OpenAI error shape, plus ``error.laneway``: who the request was for, its request id and
    attempt (and its lane, with ``show_lane``), when it went through the router (SDKs pass it
    through). A failure of laneway or of an upstream also quotes the request id in the message."""
    attribution = err.attribution
    message = err.client_message
    if attribution is not None and isinstance(err, UpstreamError | NoLaneAvailable):
        where = [f"Request id: {attribution.request_id}"] if attribution.request_id else []
        if show_lane and attribution.lane:
            where.append(f"lane: {attribution.lane}")
        if where:
            message = f"{message.rstrip('.')}. {'; '.join(where)}"
    body = err.to_openai(message)
    if attribution is not None:
        shown = attribution.as_dict()
        if not show_lane:
            shown.pop("lane", None)
        body["error"]["laneway"] = shown
    return body


def error_response(
    err: LanewayError,
    request_id: str | None = None,
    *,
    show_lane: bool = False,
    dialect: Dialect | None = None,
) -> Response:
    headers = err.headers()
    if request_id:
        headers["x-request-id"] = request_id
    status = http_status(err)
    body = error_body(err, show_lane=show_lane)
    return Response(
        orjson.dumps(body if dialect is None else dialect.error(status, body)),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def openai_error(status: int, message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


async def laneway_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LanewayError)
    record = request_record(request)
    if record is not None:
        record.error = exc.error_code
    return error_response(
        exc,
        request.scope.get("state", {}).get("request_id"),
        show_lane=bool(request.scope.get(SHOW_LANE)),
        dialect=dialect_of(request),
    )


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = (
        f"Unknown path {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
    )
    body = shaped(request, exc.status_code, openai_error(exc.status_code, message, kind))
    return Response(orjson.dumps(body), status_code=exc.status_code, media_type="application/json")


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    said = openai_error(
        500, "The gateway hit an internal error; it has been logged.", "server_error", "internal_error"
    )
    return Response(orjson.dumps(shaped(request, 500, said)), status_code=500, media_type="application/json")
