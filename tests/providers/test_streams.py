"""The adapters' streams against a real loopback upstream that cuts its events wherever a network
may. The openai pass-through hands the client the upstream's bytes, in whole events, checked; the
anthropic adapter reads events with the one codec (``laneway.sse``) and translates them."""

from __future__ import annotations

import asyncio
import itertools
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
from laneway.providers.anthropic import AnthropicProvider
from laneway.providers.base import Call, Provider, Usage
from laneway.providers.openai import OpenAIProvider
from laneway.testing import ServerThread

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def upstream(
    chunks: list[bytes], path: str = "/v1/chat/completions", media_type: str = "text/event-stream"
) -> Iterator[str]:
    """A server whose stream at ``path`` is ``chunks``, each sent on its own."""

    async def answer(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
                await asyncio.sleep(0.005)  # so the cuts travel as cuts, not one coalesced read

        return StreamingResponse(body(), media_type=media_type)

    app = Starlette(routes=[Route(path, answer, methods=["POST"])])
    with ServerThread(app) as url:
        yield url


async def read(url: str, family: str = "openai") -> tuple[list[bytes], Usage | None]:
    config = BackendConfig(provider=family, base_url=url)
    provider: Provider = (AnthropicProvider if family == "anthropic" else OpenAIProvider)("up", config)
    call = Call(
        model="m",
        body={
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    try:
        stream = await provider.stream_chat(call)
        try:
            frames = [frame async for frame in stream]
        finally:
            await stream.aclose()
        return frames, getattr(stream, "usage", None)
    finally:
        await provider.aclose()


def cut(raw: bytes, *at: int) -> list[bytes]:
    edges = [0, *at, len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(edges)]


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


# --- anthropic ----------------------------------------------------------------------------------


def named(name: str, data: dict[str, Any], *, typed: bool = True) -> bytes:
    return sse.encode({"type": name, **data} if typed else data, event=name)


ANTHROPIC = [
    named("message_start", {"message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 4}}}),
    named("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    sse.comment("keep-alive"),
    named("ping", {}, typed=False),  # the event's name is its type when the data has none
    named("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
    named("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "lo"}}, typed=False),
    named("content_block_stop", {"index": 0}),
    named("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
    named("message_stop", {}),
]


async def test_anthropic_events_cut_anywhere_are_read_whole_and_translated() -> None:
    raw = b"".join(ANTHROPIC)
    for body in (raw, raw.replace(b"\n", b"\r\n")):
        with upstream(cut(body, 3, 20, 150, 151, len(body) - 4), "/v1/messages") as url:
            frames, usage = await read(url, "anthropic")
        assert frames[-1] == sse.DONE
        chunks = [orjson.loads(e.data) for frame in frames[:-1] for e in sse.parse(frame)]
        assert [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]] == [
            "",
            "Hel",
            "lo",
            None,
        ]
        assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
        assert usage == Usage(4, 2)


async def test_anthropic_message_stop_without_its_blank_line_is_a_broken_stream() -> None:
    raw = b"".join(ANTHROPIC).removesuffix(b"\n")  # message_stop never ended
    with upstream([raw], "/v1/messages") as url, pytest.raises(StreamBroken, match="before message_stop"):
        await read(url, "anthropic")


async def test_anthropic_event_that_is_not_json_or_never_ends_is_a_protocol_error() -> None:
    not_json = [ANTHROPIC[0], b"event: content_block_start\ndata: {nope\n\n"]
    with upstream(not_json, "/v1/messages") as url, pytest.raises(UpstreamProtocolError, match="not JSON"):
        await read(url, "anthropic")
    endless = [b"event: content_block_delta\ndata: " + b"x" * (1 << 20)]
    endless += [b"x" * (1 << 20)] * (sse.MAX_EVENT_BYTES >> 20)
    with (
        upstream([ANTHROPIC[0], *endless], "/v1/messages") as url,
        pytest.raises(UpstreamProtocolError, match="stream event over"),
    ):
        await read(url, "anthropic")


async def test_ollama_line_past_the_readers_limit_is_a_protocol_error() -> None:
    """Ollama streams NDJSON lines; one longer than aiohttp's line limit (a huge tool call, or a
    server that never ends its line) is the backend's fault, said in laneway's words, not an
    aiohttp exception escaping the adapter."""
    from laneway.providers.ollama import OllamaProvider

    line = b'{"model":"m","message":{"role":"assistant","content":"' + b"x" * (600 * 1024) + b'"}}\n'
    with upstream([line[:1000], line[1000:]], path="/api/chat", media_type="application/x-ndjson") as url:
        provider = OllamaProvider("up", BackendConfig(provider="ollama", base_url=url))
        call = Call(model="m", body={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        try:
            stream = await provider.stream_chat(call)
            try:
                with pytest.raises(UpstreamProtocolError, match="line"):
                    _ = [frame async for frame in stream]
            finally:
                await stream.aclose()
        finally:
            await provider.aclose()
