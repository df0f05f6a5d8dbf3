"""The ``ReplyStream`` every adapter hands out: an upstream body, translated (or passed through)
into OpenAI SSE frames as it is read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

from laneway import sse
from laneway.errors import UpstreamProtocolError
from laneway.providers.base import OPENAI, Usage
from laneway.providers.http import StreamingBody


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
        *,
        dialect: str = OPENAI,
    ) -> None:
        self.dialect = dialect
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


async def sse_events(body: StreamingBody, splitter: sse.Splitter, backend: str) -> AsyncIterator[bytes]:
    """An upstream's SSE body as runs of whole events, as they arrive (for a pass-through, which
    checks and forwards them unchanged). What is left in ``splitter`` at the end (an event
    without its blank line) is the caller's to judge. An event over the size limit is the
    backend's protocol error."""
    async for chunk in body.chunks():
        try:
            events = splitter.feed(chunk)
        except sse.EventTooLarge:
            raise UpstreamProtocolError(
                f"backend '{backend}' sent a stream event over {splitter.max_bytes} bytes", backend=backend
            ) from None
        if events:
            yield events
