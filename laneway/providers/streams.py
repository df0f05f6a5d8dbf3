"""Building blocks for ``ReplyStream``s: OpenAI SSE frames and a stream that translates as it reads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from laneway.providers.http import StreamingBody

DONE = b"data: [DONE]\n\n"


def sse_frame(payload: Mapping[str, Any]) -> bytes:
    """One OpenAI-style SSE frame: ``data: {json}\\n\\n``."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class TranslatedStream:
    """A ReplyStream over an upstream body: ``frames`` is an async generator that reads ``body``
    and yields OpenAI SSE frames. Closing it closes both, so an abandoned client stops the upstream."""

    def __init__(self, body: StreamingBody, frames: AsyncIterator[bytes]) -> None:
        self._body = body
        self._frames = frames
        self.headers: Mapping[str, str] = body.headers

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._frames, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            await self._body.aclose()
