"""An SSE response that stops the upstream the moment the client leaves.

The body is pumped from a ``ReplyStream`` while a watcher waits for ``http.disconnect``; if the
client goes first, the pump is cancelled and the upstream stream is closed, so the backend stops
generating for nobody. An upstream failure after bytes were sent cannot be failed over: the
client gets an OpenAI-style error event and the stream ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from starlette.types import Receive, Scope, Send

from laneway import sse
from laneway.api.access import RECORD
from laneway.api.errors import error_body
from laneway.errors import LanewayError
from laneway.providers.base import ReplyStream
from laneway.routing.record import RequestRecord

log = logging.getLogger("laneway.api")


class ReplyStreamResponse:
    def __init__(self, stream: ReplyStream, headers: Mapping[str, str], *, show_lane: bool = False) -> None:
        self.stream = stream
        self.show_lane = show_lane
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.current_task()
        assert pump is not None
        state = {"done": False, "disconnected": False}

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not state["done"]:
                        state["disconnected"] = True
                        pump.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            try:
                async for frame in self.stream:
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
            except LanewayError as exc:
                record = scope.get(RECORD)
                if isinstance(record, RequestRecord):
                    record.error = exc.error_code
                attribution = exc.attribution
                log.warning(
                    "stream failed after it started",
                    extra={
                        "error": exc.message,
                        "code": exc.error_code,
                        "lane": attribution.lane if attribution else None,
                    },
                )
                frame = sse.encode(error_body(exc, show_lane=self.show_lane))
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            state["done"] = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["disconnected"]:
                raise
            pump.uncancel()  # the client left: that is the end of this response, not an error
        except OSError:
            pass  # the client's socket went away under a send
        finally:
            watcher.cancel()
            await self.stream.aclose()
