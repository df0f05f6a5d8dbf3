"""Structured logs: one JSON object per line, with whatever ``extra={...}`` a call site adds, and
the current request's id and lane (``laneway.context``) on every line written while serving it."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from laneway import context

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        ctx = context.current()
        if ctx is not None:
            out.update(ctx.fields())
        for key, value in record.__dict__.items():  # what the call site says wins
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message``, then ``[request_id lane]`` for a line written inside a request."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = context.current()
        if ctx is None:
            return line
        return f"{line} [{' '.join(ctx.fields().values())}]"


def configure(level: str = "info", *, json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
