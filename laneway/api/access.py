"""Per-request records for the access log and the RED metrics.

``request_record`` is how a route handler finds the record of the request it serves (None when
the app runs without the access middleware)."""

from __future__ import annotations

from starlette.requests import Request

from laneway.routing.record import RequestRecord

RECORD = "laneway.record"  # the ASGI scope key that holds the request's RequestRecord


def request_record(request: Request) -> RequestRecord | None:
    record = request.scope.get(RECORD)
    return record if isinstance(record, RequestRecord) else None
