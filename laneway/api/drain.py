"""Draining: how a stopping gateway lets its requests finish, relayed streams included.

A relayed call's output reaches the gateway as its publisher's posts, possibly on new
connections, so a drain happens while the gateway still listens: ``DrainGuard`` (ASGI middleware
around the whole app) counts the requests in flight and, once ``gateway.draining`` is set, answers
every new client request 503 with Retry-After (``/readyz`` says so too). What keeps working: the
publisher endpoints, ``/healthz``, ``/readyz``, ``/metrics`` and ``/admin``. A publisher's control
stream is not counted: it never ends by itself, and ends when the drain is over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from laneway.api.errors import error_response
from laneway.clock import Clock
from laneway.errors import Draining
from laneway.gateway import Gateway

log = logging.getLogger("laneway")

# Served while draining: what publishers, load balancers and operators need to see it through.
_OPEN_WHILE_DRAINING = ("/v1/publishers/", "/healthz", "/readyz", "/metrics", "/admin/")
_POLL = 0.05  # seconds between looks at what is still in flight


def _is_control_stream(path: str) -> bool:
    return path.startswith("/v1/publishers/sessions/") and path.endswith("/control")


class DrainGuard:
    """Counts the requests in flight (a publisher's control stream aside); refuses new client
    requests once the gateway drains."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_control_stream(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.gateway.draining and not scope["path"].startswith(_OPEN_WHILE_DRAINING):
            await _refuse(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def busy(self) -> tuple[int, int]:
        """(requests in flight, relayed tasks not finished)."""
        return self.in_flight, self.gateway.fleet.in_flight()

    async def drain(self, clock: Clock, timeout: float, cut_short: Callable[[], bool]) -> float:
        """Stop taking work and wait, up to ``timeout``, until nothing is in flight (or
        ``cut_short()``). Returns the seconds left of ``timeout``."""
        self.gateway.draining = True
        deadline = clock.monotonic() + timeout
        requests, relayed = self.busy()
        if not (requests or relayed):
            return timeout
        log.info(
            "draining: %d requests in flight (%d relayed); new ones get 503, for up to %gs",
            requests,
            relayed,
            timeout,
        )
        while requests or relayed:
            left = deadline - clock.monotonic()
            if cut_short() or left <= 0:
                log.warning(
                    "drain %s with %d requests in flight (%d relayed)",
                    "cut short" if cut_short() else "timed out",
                    requests,
                    relayed,
                )
                break
            await clock.sleep(min(_POLL, left))
            requests, relayed = self.busy()
        else:
            log.info("drained: nothing in flight")
        return max(0.0, deadline - clock.monotonic())


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(Draining())
    response.headers["connection"] = "close"  # the client's next request goes to another replica
    await response(scope, receive, send)
