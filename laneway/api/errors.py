"""Every error leaves the API in the OpenAI error shape, with the right status; never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from laneway.api.access import request_record
from laneway.errors import LanewayError, http_status
from laneway.routing.failover import attribution_of

log = logging.getLogger("laneway.api")


def error_body(err: LanewayError) -> dict[str, Any]:
    """The OpenAI error shape, plus ``error.laneway``: who the request was for, and which lane and
    attempt the error came from, when it went through the router (SDKs pass it through)."""
    body = err.to_openai()
    attribution = attribution_of(err)
    if attribution is not None:
        body["error"]["laneway"] = attribution.as_dict()
    return body


def error_response(err: LanewayError, request_id: str | None = None) -> Response:
    """The OpenAI error shape; a routed request's error also says who it was for and which lane
    and attempt it came from (``error.laneway``), which SDKs pass through untouched."""
    headers = err.headers()
    if request_id:
        headers["x-request-id"] = request_id
    return Response(
        orjson.dumps(error_body(err)),
        status_code=http_status(err),
        headers=headers,
        media_type="application/json",
    )


def openai_error(status: int, message: str, error_type: str, code: str | None = None) -> Response:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def laneway_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LanewayError)
    if (record := request_record(request)) is not None:
        record.error = exc.code or exc.error_type
    return error_response(exc, request.scope.get("state", {}).get("request_id"))


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = (
        f"Unknown path {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
    )
    return openai_error(exc.status_code, message, kind)


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return openai_error(
        500, "The gateway hit an internal error; it has been logged.", "server_error", "internal_error"
    )
