"""Ollama's error shape: ``{"error": "message"}`` with the HTTP status, and the same object as the
last line of an NDJSON stream that broke after it started (what Ollama itself sends; the ollama
clients raise it as ``ResponseError``)."""

from __future__ import annotations

from typing import Any

import orjson

from laneway.errors import LanewayError


class OllamaDialect:
    """The ``Dialect`` (``laneway.api.errors``) of requests under ``/api/``."""

    name = "ollama"

    def error(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return {"error": message_of(body)}


OLLAMA = OllamaDialect()


def message_of(body: dict[str, Any]) -> str:
    """The message of an error in the OpenAI shape (``{"error": {"message": ...}}``)."""
    error = body.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str):
        return message
    return str(error) if error is not None else "unknown error"


def error_line(exc: LanewayError, body: dict[str, Any]) -> bytes:
    """The last line of a stream that failed mid-way (``ReplyStreamResponse``'s ``error_frame``)."""
    return orjson.dumps({"error": message_of(body)}) + b"\n"
