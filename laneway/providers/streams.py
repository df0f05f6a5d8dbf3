"""Building blocks for ``ReplyStream``s: OpenAI SSE frames and a stream that translates as it reads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import orjson

from laneway.providers.base import Usage
from laneway.providers.http import StreamingBody

DONE = b"data: [DONE]\n\n"
MAX_EVENT_BYTES = 4 * 1024 * 1024  # one SSE event from an upstream; beyond, it is not a stream we read


def event_boundary(buffer: bytes) -> int:
    """The end of the last complete SSE event in ``buffer`` (0: none yet). Events end with a
    blank line; LF and CRLF line ends are both in use."""
    lf = buffer.rfind(b"\n\n")
    crlf = buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def sse_data(events: bytes) -> Iterator[bytes]:
    """The data of each event in ``events`` (whole events), its ``data:`` lines joined by newlines
    as the SSE specification says; events without data (comments, pings) yield nothing."""
    data: list[bytes] = []
    for raw in events.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            if data:
                yield b"\n".join(data)
                data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)


def sse_frame(payload: Mapping[str, Any]) -> bytes:
    """One OpenAI-style SSE frame: ``data: {json}\\n\\n``."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _unknown() -> Usage | None:
    return None


class TranslatedStream:
    """A ReplyStream over an upstream body: ``frames`` is an async generator that reads ``body``
    and yields OpenAI SSE frames. Closing it closes both, so an abandoned client stops the upstream.

    ``usage`` asks whoever reads the upstream's counts (a translator, or the pass-through's
    tail) for them; see each family for what is known when. It is read after the stream ended:
    upstreams report tokens at the end of a stream, never up front.
    """

    def __init__(
        self,
        body: StreamingBody,
        frames: AsyncIterator[bytes],
        usage: Callable[[], Usage | None] = _unknown,
    ) -> None:
        self._body = body
        self._frames = frames
        self._usage = usage
        self.headers: Mapping[str, str] = body.headers

    @property
    def usage(self) -> Usage | None:
        """The tokens the upstream reported so far; None if it reported none."""
        return self._usage()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._frames, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            await self._body.aclose()
