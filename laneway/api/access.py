"""The access log and the RED counts: one ``RequestRecord`` per HTTP request, written once.

``AccessMiddleware`` (pure ASGI, the gateway app's outermost layer but for starlette's error
middleware) creates the record when a request arrives and puts it in the scope (``RECORD``), where
the route handler and the router fill it in (``request_record``). It watches ``send`` for the
status, the first body byte (``ttft``) and the last one (``duration``), and when the response
ends, before its last body message goes out (so a client that has its answer can already see it
counted), it counts the request (``RequestMetrics``) and writes one line to the ``laneway.access``
logger. A response that never ended (the client left mid-stream, the server cut it) is logged
with 499, like nginx's; an exception no handler turned into a response with 500.

Probes (``/healthz``, ``/readyz``) and, unless they failed, ``/metrics`` and the publisher
endpoints are logged at debug level: a load balancer probes every second or two, Prometheus
scrapes every few seconds and a publisher posts a chunk per few tokens, so at info level they
would bury the requests the log is for. They are counted all the same. A failed scrape or
publisher call (a refused key or token) is worth its info line.

The request id is the client's ``x-request-id`` (its first 128 characters) or a new one; every
response carries it back in ``x-request-id``, and it is the id in the log line, the usage record
and ``error.laneway``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from laneway import context
from laneway.api.metrics import RequestMetrics
from laneway.clock import Clock
from laneway.routing.record import RequestRecord

RECORD = "laneway.record"  # the ASGI scope key that holds the request's RequestRecord
REQUEST_ID = b"x-request-id"
REQUEST_ID_MAX = 128
PROBES = frozenset({"/healthz", "/readyz"})
QUIET = frozenset({"/metrics"})  # and every publisher endpoint: debug unless it failed
PUBLISHERS = "/v1/publishers/"

log = logging.getLogger("laneway.access")


def request_record(request: Request) -> RequestRecord | None:
    """The record of the request ``request`` is (None when the app runs without the middleware)."""
    record = request.scope.get(RECORD)
    return record if isinstance(record, RequestRecord) else None


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == REQUEST_ID and value:
            return value[:REQUEST_ID_MAX].decode("latin-1")
    return os.urandom(12).hex()


def log_level(route: str, status: int) -> int:
    if route in PROBES:
        return logging.DEBUG
    if (route in QUIET or route.startswith(PUBLISHERS)) and status < 400:
        return logging.DEBUG
    return logging.INFO


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def access_fields(record: RequestRecord) -> dict[str, Any]:
    """The access log line's fields (seconds rounded to the millisecond)."""
    return {
        "request_id": record.request_id,
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "caller": record.caller,
        "dialect": record.dialect,
        "operation": record.operation,
        "requested": record.requested,
        "lane": record.lane,
        "backend": record.backend,
        "attempts": record.attempts,
        "queue_wait": round(record.queue_wait, 3),
        "duration": _ms(record.duration),
        "ttft": _ms(record.ttft),
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "error": record.error,
        "streamed": record.streamed,
    }


class AccessMiddleware:
    def __init__(self, app: ASGIApp, *, clock: Clock, metrics: RequestMetrics, log_lines: bool) -> None:
        self.app = app
        self.clock = clock
        self.metrics = metrics
        self.log_lines = log_lines  # server.access_log; the counts are kept either way

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock = self.clock
        rid = _request_id(scope["headers"])
        record = RequestRecord(rid, scope["method"], scope["path"], clock.monotonic(), clock.now())
        scope[RECORD] = record
        scope.setdefault("state", {})["request_id"] = rid  # for the error handlers
        ended = False

        async def send_noting(message: Message) -> None:
            nonlocal ended
            kind = message["type"]
            if kind == "http.response.body":
                if record.ttft is None and message.get("body"):
                    record.ttft = clock.monotonic() - record.started
                if not message.get("more_body", False) and not ended:
                    ended = True
                    record.duration = clock.monotonic() - record.started
                    self._finish(scope, record)
            elif kind == "http.response.start":
                record.status = message["status"]
                headers = message.get("headers", ())
                for name, _ in headers:
                    if name == REQUEST_ID:
                        break
                else:
                    # A copy: a response object (and its headers) may be shared between requests.
                    message = {**message, "headers": [*headers, (REQUEST_ID, rid.encode("latin-1"))]}
            await send(message)

        failed = False
        try:
            with context.request(rid):
                await self.app(scope, receive, send_noting)
        except Exception:
            failed = True
            if record.status is None:
                record.status = 500  # what starlette's error middleware answers next
            record.error = record.error or "internal_error"
            raise
        finally:
            if not ended:
                if not failed:
                    # The response stopped before its end: the client left (a stream, a control
                    # stream) or the server cut it short.
                    record.status = 499
                record.duration = clock.monotonic() - record.started
                self._finish(scope, record)

    def _finish(self, scope: Scope, record: RequestRecord) -> None:
        route: str = getattr(scope.get("route"), "path", "")  # the template; "" if none matched
        status = record.status or 0
        self.metrics.observe(record, route)
        if self.log_lines:
            level = log_level(route, status)
            if log.isEnabledFor(level):
                # What log.log(level, "request", extra=...) does, without its stack walk for the
                # caller's file and line (nobody reads them here) and its check of every extra
                # key: half the cost of a line that every request pays.
                line = log.makeRecord(log.name, level, "", 0, "request", (), None)
                line.__dict__.update(access_fields(record))
                log.handle(line)
