"""Errors in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}, "request_id"}``,
the type chosen by the status as Anthropic's API does, and a stream's ``event: error``.

Statuses: laneway's 503 (no lane can take the request now, a queue wait ran out, draining) and an
upstream's 503 or 529 are Anthropic's 529 ``overloaded_error``, which its SDKs and Claude Code
know to retry. Everything else keeps laneway's status. ``error.laneway`` (who the request was for,
its request id, the attempt) stays in the error object: Anthropic's SDKs keep the whole body.
"""

from __future__ import annotations

from typing import Any

from laneway import sse
from laneway.errors import LanewayError, UpstreamStatusError, http_status

OVERLOADED = 529
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def status_of(exc: LanewayError) -> int:
    """The status an Anthropic client gets for ``exc``."""
    status = http_status(exc)
    if status == 503:
        return OVERLOADED
    if isinstance(exc, UpstreamStatusError) and exc.upstream_status in (503, OVERLOADED):
        return OVERLOADED
    return status


class AnthropicDialect:
    """``api.errors.Dialect`` for ``/v1/messages``: an OpenAI error body in Anthropic's shape."""

    name = "anthropic"

    def error(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        said = body.get("error")
        said = said if isinstance(said, dict) else {}
        message = said.get("message")
        error: dict[str, Any] = {"type": error_type(status), "message": str(message or "error")}
        attribution = said.get("laneway")
        if isinstance(attribution, dict):
            error["laneway"] = attribution
        out: dict[str, Any] = {"type": "error", "error": error}
        request_id = attribution.get("request_id") if isinstance(attribution, dict) else None
        if request_id:
            out["request_id"] = request_id
        return out


ANTHROPIC = AnthropicDialect()


def error_frame(exc: LanewayError, body: dict[str, Any]) -> bytes:
    """A stream's last event when it broke after it started (``api.streaming``'s error_frame)."""
    return sse.encode(ANTHROPIC.error(status_of(exc), body), event="error")
