"""The anthropic family serving a ``/v1/messages`` request natively (``providers.anthropic_native``):
the client's body forwarded with only its model rewritten, its ``anthropic-beta`` and
``anthropic-version`` forwarded, the answer and the stream's events passed back byte for byte,
usage read on the way, and an upstream ``error`` event raised as an ``UpstreamError``. Against
the sim, and a scripted upstream on loopback that records what it got and streams what it is told."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from laneway import sse
from laneway.config.schema import BackendConfig
from laneway.errors import StreamBroken, UpstreamStatusError
from laneway.providers.anthropic import AnthropicProvider
from laneway.providers.base import Call, Native, Usage
from laneway.sim.app import build_sim_app
from laneway.sim.options import SimOptions
from laneway.testing import ServerThread

pytestmark = pytest.mark.anyio


class Scripted:
    """An Anthropic upstream that answers ``/v1/messages`` with ``events`` (a stream) or ``body``,
    and keeps each request's headers and body."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.body: bytes = b"{}"
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        request = orjson.loads(b"".join(chunks))
        self.requests.append(({k.decode(): v.decode() for k, v in scope["headers"]}, request))
        streamed = request.get("stream") is True
        kind = b"text/event-stream" if streamed else b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
        for piece in self.events if streamed else [self.body]:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def scripted() -> Iterator[tuple[Scripted, str]]:
    app = Scripted()
    with ServerThread(app) as url:
        yield app, url


@pytest.fixture
def sim() -> Iterator[str]:
    with ServerThread(build_sim_app(SimOptions(family="anthropic"))) as url:
        yield url


async def provider_at(url: str) -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider("claude", BackendConfig(provider="anthropic", base_url=url, api_key="k"))
    try:
        yield provider
    finally:
        await provider.aclose()


def native_call(body: dict[str, Any], headers: dict[str, str] | None = None) -> Call:
    chat = {"model": body["model"], "messages": [{"role": "user", "content": "translated"}]}
    return Call("lane-model", chat, None, native=Native("anthropic", body, headers or {}))


def event(name: str, data: dict[str, Any]) -> bytes:
    return sse.encode({"type": name, **data}, event=name)


START = event(
    "message_start",
    {
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "usage": {"input_tokens": 9, "output_tokens": 1},
        }
    },
)
END = event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}) + event(
    "message_stop", {}
)


async def test_the_body_goes_as_sent_with_the_lanes_model_and_the_clients_headers(
    scripted: tuple[Scripted, str],
) -> None:
    app, url = scripted
    app.body = orjson.dumps(
        {
            "type": "message",
            "id": "msg_1",
            "content": [{"type": "text", "text": "hi", "citations": []}],
            "usage": {"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 5},
        }
    )
    body = {
        "model": "asked",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}],
        "context_management": {"edits": []},
        "stream": False,
    }
    async for provider in provider_at(url):
        reply = await provider.chat(
            native_call(body, {"anthropic-beta": "b1,b2", "anthropic-version": "2099-01-01"})
        )
        assert reply.dialect == "anthropic"
        assert reply.body == app.body  # as it came
        assert reply.usage == Usage(8, 2)
    headers, sent = app.requests[0]
    assert sent == {**body, "model": "lane-model"}
    assert headers["anthropic-beta"] == "b1,b2"
    assert headers["anthropic-version"] == "2099-01-01"
    assert headers["x-api-key"] == "k"


async def test_the_stream_passes_through_byte_for_byte_with_its_usage(scripted: tuple[Scripted, str]) -> None:
    app, url = scripted
    block = event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    delta = event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hi"}})
    whole = START + event("ping", {}) + block + delta + event("content_block_stop", {"index": 0}) + END
    app.events = [whole[:10], whole[10:200], whole[200:]]  # cut anywhere
    async for provider in provider_at(url):
        stream = await provider.stream_chat(native_call({"model": "asked", "max_tokens": 5, "messages": []}))
        assert stream.dialect == "anthropic"
        out = b"".join([frame async for frame in stream])
        await stream.aclose()
        assert out == whole
        assert stream.usage == Usage(9, 4)
    assert app.requests[0][1]["stream"] is True


async def read_into(stream: Any, frames: list[bytes]) -> None:
    async for frame in stream:
        frames.append(frame)


async def test_an_error_event_mid_stream_is_an_upstream_error(scripted: tuple[Scripted, str]) -> None:
    app, url = scripted
    overloaded = event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
    app.events = [START, overloaded]
    async for provider in provider_at(url):
        stream = await provider.stream_chat(native_call({"model": "asked", "max_tokens": 5, "messages": []}))
        passed: list[bytes] = []
        with pytest.raises(UpstreamStatusError) as failed:
            await read_into(stream, passed)
        await stream.aclose()
    # The error event itself is never passed on (the client gets laneway's own error event).
    assert b"overloaded_error" not in b"".join(passed)
    assert failed.value.upstream_status == 529


async def test_a_stream_cut_before_message_stop_is_broken(scripted: tuple[Scripted, str]) -> None:
    app, url = scripted
    app.events = [START]
    async for provider in provider_at(url):
        stream = await provider.stream_chat(native_call({"model": "asked", "max_tokens": 5, "messages": []}))
        with pytest.raises(StreamBroken):
            _ = [frame async for frame in stream]
        await stream.aclose()


async def test_an_error_object_in_place_of_an_answer_is_an_upstream_error(
    scripted: tuple[Scripted, str],
) -> None:
    app, url = scripted
    app.body = orjson.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
    async for provider in provider_at(url):
        with pytest.raises(UpstreamStatusError) as failed:
            await provider.chat(native_call({"model": "asked", "max_tokens": 5, "messages": []}))
    assert failed.value.upstream_status == 429


async def test_against_the_sim_and_count_tokens(sim: str) -> None:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hello there"}],
    }
    async for provider in provider_at(sim):
        call = native_call(body)
        call.model = "claude-haiku-4-5"
        reply = await provider.chat(call)
        answer = orjson.loads(reply.body)
        assert answer["content"][0]["text"] == "Hello from claude-haiku-4-5. You said: hello there"
        stream = await provider.stream_chat(call)
        events = list(sse.parse(b"".join([frame async for frame in stream])))
        await stream.aclose()
        assert events[0].event == "message_start"
        assert events[-1].event == "message_stop"
        counted = await provider.count_tokens(
            {"model": "claude-haiku-4-5", "messages": body["messages"]}, {"anthropic-beta": "x"}
        )
        assert counted == 2
