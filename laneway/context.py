"""Request context: what every log line written while serving a request says about it.

The access middleware enters a ``RequestContext`` when a request arrives; the router notes the
lane it is trying. The log formatters (``laneway.logs``) read it, so a line from a provider, a
pool or the relay carries the request's id without anyone passing it along. A context variable
follows the request across awaits and into the tasks it starts (a stream's body, a publisher
task's wait), and never leaks into another request's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class RequestContext:
    request_id: str
    lane: str | None = None  # the lane being tried (the router sets it per attempt)

    def fields(self) -> dict[str, str]:
        shown = {"request_id": self.request_id}
        if self.lane is not None:
            shown["lane"] = self.lane
        return shown


_current: ContextVar[RequestContext | None] = ContextVar("laneway_request", default=None)


def current() -> RequestContext | None:
    return _current.get()


@contextmanager
def request(request_id: str) -> Iterator[RequestContext]:
    """The context of one request, for the code that runs inside the block."""
    ctx = RequestContext(request_id)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def note_lane(lane: str) -> None:
    """The lane the current request is trying now (no-op outside a request)."""
    ctx = _current.get()
    if ctx is not None:
        ctx.lane = lane
