"""The openai adapter's stream pass-through against a real loopback upstream that cuts its events
wherever a network may: what reaches the client is the upstream's bytes, in whole events, checked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from laneway import sse
from laneway.config.schema import BackendConfig
from laneway.errors import StreamBroken, UpstreamProtocolError
from laneway.providers.base import Call, Usage
from laneway.providers.openai import OpenAIProvider
from laneway.testing import ServerThread

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def upstream(chunks: list[bytes]) -> Iterator[str]:
    """An OpenAI-compatible server whose chat stream is ``chunks``, each sent on its own."""

    async def chat(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
                await asyncio.sleep(0.005)  # so the cuts travel as cuts, not one coalesced read

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    with ServerThread(app) as url:
        yield url


async def read(url: str) -> tuple[list[bytes], Usage | None]:
    provider = OpenAIProvider("up", BackendConfig(provider="openai", base_url=url))
    call = Call(
        model="m", body={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    try:
        stream = await provider.stream_chat(call)
        try:
            frames = [frame async for frame in stream]
        finally:
            await stream.aclose()
        return frames, stream.usage
    finally:
        await provider.aclose()


def chunk(text: str) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }


USAGE = {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


async def test_events_cut_anywhere_reach_the_client_whole_and_as_the_upstream_wrote_them() -> None:
    events = [
        sse.encode(chunk("Hel")),
        sse.comment("keep-alive"),
        sse.encode(chunk("lo")).replace(b"\n", b"\r\n"),
        sse.encode(USAGE),
        sse.DONE,
    ]
    raw = b"".join(events)
    cuts = [raw[:5], raw[5:40], raw[40 : len(events[0]) + 3], raw[len(events[0]) + 3 : -9], raw[-9:]]
    with upstream(cuts) as url:
        frames, usage = await read(url)
    assert b"".join(frames) == raw
    assert all(sse.boundary(frame) == len(frame) for frame in frames)  # never half an event
    decoded = [e.data for frame in frames for e in sse.parse(frame)]
    assert [orjson.loads(d) for d in decoded[:-1]] == [chunk("Hel"), chunk("lo"), USAGE]
    assert usage == Usage(3, 2)


async def test_a_last_event_without_its_blank_line_still_counts() -> None:
    with upstream([sse.encode(chunk("x")), b"data: [DONE]"]) as url:
        frames, _ = await read(url)
    assert frames == [sse.encode(chunk("x")), b"data: [DONE]"]


async def test_an_event_that_never_ends_is_a_protocol_error_not_a_buffer_without_limit() -> None:
    endless = [b"data: " + b"x" * (1 << 20)] * (sse.MAX_EVENT_BYTES // (1 << 20) + 1)
    with (
        upstream([sse.encode(chunk("x")), *endless]) as url,
        pytest.raises(UpstreamProtocolError, match="stream event over"),
    ):
        await read(url)


async def test_a_stream_cut_before_done_is_broken() -> None:
    with upstream([sse.encode(chunk("x"))]) as url, pytest.raises(StreamBroken, match="without \\[DONE\\]"):
        await read(url)


async def test_a_frame_that_is_not_json_is_a_protocol_error() -> None:
    with (
        upstream([sse.encode(chunk("x")), b"data: {not json\n\n", sse.DONE]) as url,
        pytest.raises(UpstreamProtocolError, match="not a JSON object"),
    ):
        await read(url)
