"""A streamed response that stops the upstream the moment the client leaves.

The body is pumped from a ``ReplyStream`` (or any stream of ready frames: a dialect's translation
of one) while a watcher waits for ``http.disconnect``; if the client goes first, the pump is
cancelled and the upstream stream is closed, so the backend stops generating for nobody. An
upstream failure after bytes were sent cannot be failed over: the client gets an error frame (an
OpenAI-style error event unless the dialect says otherwise: ``error_frame``) and the stream ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from laneway import sse
from laneway.api.access import RECORD
from laneway.api.errors import error_body
from laneway.errors import LanewayError
from laneway.routing.record import RequestRecord

log = logging.getLogger("laneway.api")

SSE = "text/event-stream; charset=utf-8"


class Frames(Protocol):
    """What the response pumps: ready-to-send frames, closed when the response ends."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


def openai_error_frame(exc: LanewayError, body: dict[str, Any]) -> bytes:
    return sse.encode(body)


class ReplyStreamResponse:
    """``error_frame(exc, body)``: the last frame of a stream that broke (``body``: the error in
    the OpenAI shape, as ``api.errors.error_body`` puts it)."""

    def __init__(
        self,
        stream: Frames,
        headers: Mapping[str, str],
        *,
        show_lane: bool = False,
        media_type: str = SSE,
        error_frame: Callable[[LanewayError, dict[str, Any]], bytes] = openai_error_frame,
    ) -> None:
        self.stream = stream
        self.show_lane = show_lane
        self.error_frame = error_frame
        self.raw_headers = [
            (b"content-type", media_type.encode("latin-1")),
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
                frame = self.error_frame(exc, error_body(exc, show_lane=self.show_lane))
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
