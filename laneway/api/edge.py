"""The HTTP edge: what a connection may cost the gateway before it is cut.

uvicorn's httptools protocol buffers a request head for as long as it takes and as large as it
grows, and waits on a body forever. ``EdgeProtocol`` is that protocol with the ``server:`` limits:

- a request head (request line and headers) is fed to the parser only up to
  ``max_header_bytes``: one byte more and the answer is 431, so an unfinished head never holds
  more than that (httptools buffers an unfinished header line itself, out of our sight);
- more than ``max_headers`` header lines: 431;
- the first request's head must be complete ``header_timeout`` after the connection opened, a
  later one's ``header_timeout`` after its first byte (the idle wait between requests is
  ``keepalive_timeout``, uvicorn's own); else 408, or a plain close if nothing was sent at all;
- a request body may be silent for ``body_timeout`` at most, and once it has taken that long it
  must have averaged ``min_body_rate`` bytes/s: else 408. Time the gateway itself is not reading
  (its buffer full, or ``Expect: 100-continue`` not yet answered) is not held against the client;
- beyond ``max_connections`` open connections a new one is answered 503 at once.

Every refusal is a short OpenAI-shaped JSON error with ``connection: close``. The connection is
then half-closed and what the client still sends is read and dropped for ``LINGER`` seconds, so
the client reads the answer instead of a reset; then it is closed.

These are transport-level timers on the server's own loop (``call_later``), not laneway logic on
the injected clock; what they decide is plain data (``EdgeLimits``) with its own tests.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httptools
import orjson
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from laneway.config.schema import ServerConfig

log = logging.getLogger("laneway.edge")

LINGER = 1.0  # seconds a refused connection's further bytes are read and dropped before the close

_REFUSALS: dict[str, tuple[int, str, str]] = {  # reason: (status, error type, message about limits ``l``)
    "header_too_large": (
        431,
        "invalid_request_error",
        "The request line and headers are over {l.max_header_bytes} bytes",
    ),
    "too_many_headers": (
        431,
        "invalid_request_error",
        "The request has more than {l.max_headers} header lines",
    ),
    "header_timeout": (
        408,
        "invalid_request_error",
        "The request headers took longer than {l.header_timeout:g}s",
    ),
    "body_timeout": (
        408,
        "invalid_request_error",
        "The request body was silent for {l.body_timeout:g}s, or slower than {l.min_body_rate} bytes/s",
    ),
    "too_many_connections": (
        503,
        "service_unavailable",
        "The gateway has {l.max_connections} connections open",
    ),
}


@dataclass(frozen=True)
class EdgeLimits:
    """The ``server:`` limits one connection lives under (see the module's docstring)."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    min_body_rate: int = 1024
    keepalive_timeout: float = 5.0
    max_connections: int = 4096

    @classmethod
    def of(cls, server: ServerConfig) -> EdgeLimits:
        return cls(
            max_header_bytes=server.max_header_bytes,
            max_headers=server.max_headers,
            header_timeout=server.header_timeout,
            body_timeout=server.body_timeout,
            min_body_rate=server.min_body_rate,
            keepalive_timeout=server.keepalive_timeout,
            max_connections=server.max_connections,
        )

    def body_deadline(self, started: float, last_data: float, received: int) -> float:
        """When a body that began at ``started`` and has brought ``received`` bytes, the last of
        them at ``last_data``, is to be cut: after ``body_timeout`` of silence, or once it is
        older than ``body_timeout`` and its average fell below ``min_body_rate``."""
        silent = last_data + self.body_timeout
        if self.min_body_rate <= 0:
            return silent
        slow = started + max(self.body_timeout, received / self.min_body_rate)
        return min(silent, slow)

    def refusal(self, reason: str) -> bytes:
        """The whole answer (status line, headers, body) for a connection cut for ``reason``."""
        status, kind, template = _REFUSALS[reason]
        message = template.format(l=self)
        body = orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": reason}})
        extra = b"retry-after: 1\r\n" if status == 503 else b""
        return b"".join(
            [
                STATUS_LINE[status],
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                extra,
                b"connection: close\r\n\r\n",
                body,
            ]
        )


@dataclass
class EdgeStats:
    """What the edge did, for one server: connections cut, by reason, and the largest request
    head it ever held unfinished (bytes fed to the parser before the head was complete)."""

    cut: Counter[str] = field(default_factory=Counter)
    largest_head: int = 0


class _HeadRefused(Exception):
    """Raised from a parser callback to stop the parser; the reason is on the protocol."""


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under ``limits`` (a subclass per server: ``edge_protocol``)."""

    limits: ClassVar[EdgeLimits] = EdgeLimits()
    stats: ClassVar[EdgeStats]  # set by ``edge_protocol``: one per server, never shared

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]  # a float is fine
        self._in_head = True  # between requests, or before the head of this one is complete
        self._head_begun = False  # the current head's first byte arrived
        self._head_bytes = 0  # counted bytes of the current head
        self._heads_done = 0
        self._body_started = self._body_last = 0.0
        self._body_bytes = 0
        self._head_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        self._linger: TimerHandle | None = None
        self._refusing: str | None = None  # why the parser was stopped from a callback
        self._refused = False

    # -- the connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse("too_many_connections")
            return
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._refused:
            self.transport.close()
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and dropped
        self._unset_keepalive_if_required()
        limit = self.limits.max_header_bytes
        view = memoryview(data)
        # Pieces of at most ``limit`` bytes: a head that starts inside a piece, right after the
        # previous request (pipelining), is uncounted for the rest of that piece only.
        while view:
            size = limit - self._head_bytes if self._in_head else limit
            piece, view = view[:size], view[size:]
            whole_piece_in_head = self._in_head
            heads_done = self._heads_done
            if not self._feed(piece):
                return
            if self._in_head and whole_piece_in_head and self._heads_done == heads_done:
                self._head_bytes += len(piece)
                if self._head_bytes > self.stats.largest_head:
                    self.stats.largest_head = self._head_bytes
                if self._head_bytes >= limit:  # a head of ``limit`` bytes would have completed
                    self._refuse("header_too_large")
                    return
        self._arm_after_read()

    def _feed(self, piece: memoryview) -> bool:
        """Parse ``piece``; False if the connection is done with (refused or answered 400)."""
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
            return False
        except httptools.HttpParserError:
            if self._refusing is not None:
                self._refuse(self._refusing)
                return False
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        return not self._refused

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn's says to install a websocket library; the gateway serves no websockets, and an
        # Upgrade header is answered as a plain request: not worth a warning per request.
        log.debug("Upgrade request served as a plain HTTP request", extra={"client": self.client})

    def _arm_after_read(self) -> None:
        """Timers for what the read left unfinished: a head (not while the previous response is
        still being sent: a pipelined head waits for it), or a body."""
        if self._in_head:
            if self._head_begun and self._head_timer is None and not self._responding():
                self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timeout)
            return
        now = self.loop.time()
        self._body_last = now
        if self._body_timer is None:
            self._body_started = now
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_check)

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True

    def on_headers_complete(self) -> None:
        if len(self.headers) > self.limits.max_headers:
            self._refusing = "too_many_headers"
            raise _HeadRefused
        self._in_head = False
        self._heads_done += 1
        self._head_bytes = 0
        self._body_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_begun = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_head and self._head_begun and self._head_timer is None and not self._responding():
            # The next request's head began while this response was being sent.
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timeout)

    # -- timers --------------------------------------------------------------------------------

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self._head_begun or self._head_bytes:
            self._refuse("header_timeout")
        else:  # connected and said nothing: nobody to answer
            self.stats.cut["idle_connection"] += 1
            self.transport.close()

    def _body_check(self) -> None:
        self._body_timer = None
        if self._refused or self._in_head or self.transport.is_closing():
            return
        now = self.loop.time()
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # The gateway is not reading: the client cannot be slow. Measure afresh from here.
            self._body_started = self._body_last = now
            self._body_bytes = 0
        deadline = self.limits.body_deadline(self._body_started, self._body_last, self._body_bytes)
        if deadline <= now:
            self._refuse("body_timeout")
            return
        self._body_timer = self.loop.call_later(deadline - now, self._body_check)

    # -- refusing ------------------------------------------------------------------------------

    def _refuse(self, reason: str) -> None:
        """Answer ``reason``'s error and close: half-close, drop what still comes for ``LINGER``
        seconds, then close. Mid-response there is no answer to give: just the close."""
        self._refused = True
        self.stats.cut[reason] += 1
        log.debug("connection cut: %s", reason, extra={"client": self.client})
        self._unset_keepalive_if_required()
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app's next receive() is a disconnect and whatever it still sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        self.transport.write(self.limits.refusal(reason))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self._linger = self.loop.call_later(LINGER, self.transport.close)


def edge_protocol(limits: EdgeLimits, stats: EdgeStats | None = None) -> type[EdgeProtocol]:
    """``EdgeProtocol`` under ``limits``, counting into ``stats``: one class per server."""
    return type("EdgeProtocol", (EdgeProtocol,), {"limits": limits, "stats": stats if stats else EdgeStats()})


def edge_config(
    app: Any, server: ServerConfig, stats: EdgeStats | None = None, **options: Any
) -> uvicorn.Config:
    """The uvicorn config that serves ``app`` under ``server``'s limits (``laneway serve``,
    ``laneway demo`` and the tests' gateway all use it). ``options`` are uvicorn's (host, port,
    lifespan, ...)."""
    settings: dict[str, Any] = {
        "lifespan": "off",
        "access_log": False,
        "log_config": None,
        **options,
    }
    return uvicorn.Config(
        app,
        http=edge_protocol(EdgeLimits.of(server), stats),
        ws="none",  # the gateway serves no websockets: an Upgrade is an ordinary request
        timeout_keep_alive=server.keepalive_timeout,  # type: ignore[arg-type]  # a float is fine
        **settings,
    )
