"""The usage API (JSON), for operators: who used what, summed from the usage records.

    GET /admin/usage   ?since=SECONDS_AGO|DURATION|ISO8601  &group_by=caller,lane (default: caller)
                       &replica=ID (only what that replica served)

``since`` takes seconds ago (``3600``), a duration (``15m``, ``1h30m``, ``7d``) or an ISO 8601
time (UTC unless it has an offset); without it, all records count. ``group_by`` takes any of
caller, requested, lane, backend, model, replica (the one that served the request; empty for
records older than that column); empty (``group_by=``) gives one total. The answer::

    {"now": 1795463963.1, "since": 1795460363.1, "group_by": ["caller", "lane"], "replica": null,
     "rows": [{"caller": "ci", "lane": "...", "requests": 12, "prompt_tokens": 3400,
               "completion_tokens": 910, "unreported": 0}, ...]}

Token sums are what upstreams reported (null when no request of the row reported any);
``unreported`` counts the requests that reported no tokens at all. Records reach the database
within about a second of the request (they are written in batches), so the newest may be missing.

It needs an admin key, like the rest of ``/admin``, and reads the database (not the gateway's
memory), so every replica answers the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from laneway.api.admin_routes import json_response
from laneway.errors import InvalidRequest
from laneway.usage import parse_group_by, parse_since

if TYPE_CHECKING:
    from laneway.gateway import Gateway

DEFAULT_GROUP_BY = "caller"
_PARAMS = frozenset({"since", "group_by", "replica"})


def usage_routes(gateway: Gateway) -> list[Route]:
    """The usage endpoints, to mount in the gateway's app."""

    async def usage(request: Request) -> Response:
        gateway.keys.require_admin(request.headers.get("authorization"), request.headers.get("x-api-key"))
        params = request.query_params
        unknown = sorted(set(params) - _PARAMS)
        if unknown:
            raise InvalidRequest(
                f"Unknown parameter '{unknown[0]}'; /admin/usage takes since, group_by and replica",
                param=unknown[0],
            )
        now = gateway.clock.now()
        since: float | None = None
        if "since" in params:
            try:
                since = parse_since(params["since"], now)
            except ValueError as exc:
                raise InvalidRequest(f"since: {exc}", param="since") from None
        try:
            group_by = parse_group_by(params.get("group_by", DEFAULT_GROUP_BY))
        except ValueError as exc:
            raise InvalidRequest(f"group_by: {exc}", param="group_by") from None
        replica = params.get("replica") or None
        totals = await gateway.db.usage.summary(
            datetime.fromtimestamp(since, UTC) if since is not None else None, group_by, replica=replica
        )
        return json_response(
            {
                "now": now,
                "since": since,
                "group_by": group_by,
                "replica": replica,
                "rows": [t.as_dict() for t in totals],
            }
        )

    return [Route("/admin/usage", usage, methods=["GET"])]
