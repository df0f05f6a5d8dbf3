"""The ollama and anthropic adapters against the simulated upstream on loopback: real HTTP, real
streams, real failures. Answers are checked by parsing them with the official ``openai`` SDK's
types, which is what a client of laneway does."""

from __future__ import annotations

import base64
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import orjson
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from laneway.config.schema import BackendConfig
from laneway.errors import (
    StreamBroken,
    UnsupportedParameter,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamStatusError,
    classify,
)
from laneway.providers.anthropic import AnthropicProvider
from laneway.providers.base import Call, ReplyStream
from laneway.providers.ollama import OllamaProvider
from laneway.sim.app import build_sim_app
from laneway.sim.options import SimOptions
from laneway.testing import ServerThread

pytestmark = pytest.mark.anyio

KEY = "sim-secret"
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def sim(**options: Any) -> Iterator[str]:
    with ServerThread(build_sim_app(SimOptions(**options))) as url:
        yield url


@asynccontextmanager
async def provider(family: str, url: str, **config: Any) -> AsyncIterator[Any]:
    cls = OllamaProvider if family == "ollama" else AnthropicProvider
    adapter = cls(f"test-{family}", BackendConfig(provider=family, base_url=url, **config))
    try:
        yield adapter
    finally:
        await adapter.aclose()


def chat_call(model: str, messages: list[dict[str, Any]], **body: Any) -> Call:
    return Call(model=model, body={"model": model, "messages": messages, **body})


USER = [{"role": "user", "content": "hi there"}]


async def collect(stream: ReplyStream) -> list[dict[str, Any]]:
    """Every frame of a stream, parsed; asserts the SSE framing and the final [DONE]."""
    frames = []
    try:
        async for frame in stream:
            frames.append(frame)
    finally:
        await stream.aclose()
    assert frames[-1] == b"data: [DONE]\n\n"
    out = []
    for frame in frames[:-1]:
        assert frame.startswith(b"data: ")
        assert frame.endswith(b"\n\n")
        out.append(orjson.loads(frame[6:]))
    return out


def assemble(chunks: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]], str | None]:
    """(content, tool calls, finish reason) from chat chunks, as the openai SDK's users do."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        parsed = ChatCompletionChunk.model_validate(chunk)
        for choice in parsed.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = tc.id or call["id"]
                if tc.function is not None:
                    call["name"] += tc.function.name or ""
                    call["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- ollama -------------------------------------------------------------------------------------


async def test_ollama_list_models() -> None:
    with sim(family="ollama", models=["llama3.2:3b", "qwen3:8b", "nomic-embed-text:latest"]) as url:
        async with provider("ollama", url + "/v1") as ollama:
            models = {m.id: m for m in await ollama.list_models()}
    assert set(models) == {"llama3.2:3b", "qwen3:8b", "nomic-embed-text:latest"}
    assert models["llama3.2:3b"].types == {"chat", "completion"}
    assert "tools" in models["llama3.2:3b"].capabilities
    assert "reasoning" in models["qwen3:8b"].capabilities
    assert models["nomic-embed-text:latest"].types == {"embedding"}
    assert models["llama3.2:3b"].context_length == 8192


async def test_ollama_chat_and_stream() -> None:
    with sim(family="ollama") as url:
        async with provider("ollama", url) as ollama:
            reply = await ollama.chat(chat_call("llama3.2:3b", USER, max_tokens=50))
            stream = await ollama.stream_chat(
                chat_call("llama3.2:3b", USER, stream=True, stream_options={"include_usage": True})
            )
            chunks = await collect(stream)
    completion = ChatCompletion.model_validate_json(reply.body)
    assert completion.model == "llama3.2:3b"
    assert completion.choices[0].message.content == "Hello from llama3.2:3b. You said: hi there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (
        completion.usage.total_tokens
        == completion.usage.prompt_tokens + completion.usage.completion_tokens
        > 0
    )
    content, calls, finish = assemble(chunks)
    assert content == "Hello from llama3.2:3b. You said: hi there"
    assert not calls
    assert finish == "stop"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] > 0


async def test_ollama_tool_round_trip() -> None:
    with sim(family="ollama") as url:
        async with provider("ollama", url) as ollama:
            first = ChatCompletion.model_validate_json(
                (await ollama.chat(chat_call("llama3.2:3b", USER, tools=[WEATHER]))).body
            )
            [tool_call] = first.choices[0].message.tool_calls or []
            assert first.choices[0].finish_reason == "tool_calls"
            assert tool_call.function.name == "weather"
            assert orjson.loads(tool_call.function.arguments) == {"city": "sim"}
            history = [
                *USER,
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": tool_call.id, "content": "sunny, 21C"},
            ]
            second = ChatCompletion.model_validate_json(
                (await ollama.chat(chat_call("llama3.2:3b", history, tools=[WEATHER]))).body
            )
            streamed = await collect(
                await ollama.stream_chat(chat_call("llama3.2:3b", USER, tools=[WEATHER], stream=True))
            )
    assert "The tool said: sunny, 21C" in (second.choices[0].message.content or "")
    _, calls, finish = assemble(streamed)
    assert finish == "tool_calls"
    assert [(c["name"], orjson.loads(c["arguments"])) for c in calls] == [("weather", {"city": "sim"})]
    assert calls[0]["id"]


async def test_ollama_route_effort_follows_discovered_capabilities() -> None:
    with sim(family="ollama", models=["llama3.2:3b", "qwen3:8b"]) as url:
        async with provider("ollama", url) as ollama:
            await ollama.list_models()
            replies = {}
            for model in ("llama3.2:3b", "qwen3:8b"):
                call = chat_call(model, USER)
                call.effort = "high"
                replies[model] = ChatCompletion.model_validate_json((await ollama.chat(call)).body)
    assert not (replies["llama3.2:3b"].choices[0].message.model_extra or {}).get("reasoning_content")
    assert (replies["qwen3:8b"].choices[0].message.model_extra or {})["reasoning_content"]
    # (the sim's Ollama streams carry no message.thinking, so streamed reasoning is covered by
    # the unit tests of the stream translator)


async def test_ollama_completions() -> None:
    with sim(family="ollama") as url:
        async with provider("ollama", url) as ollama:
            call = Call(
                model="llama3.2:3b", body={"model": "llama3.2:3b", "prompt": "Once upon", "max_tokens": 3}
            )
            reply = Completion.model_validate_json((await ollama.complete(call)).body)
            call.body["stream"] = True
            chunks = await collect(await ollama.stream_complete(call))
    assert reply.object == "text_completion"
    assert reply.choices[0].finish_reason == "length"
    assert len(reply.choices[0].text.split()) == 3
    # (stream chunks are Completion objects whose finish_reason is null until the last one)
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == reply.choices[0].text
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_ollama_embeddings_float_and_base64() -> None:
    with sim(family="ollama", embedding_dim=8) as url:
        async with provider("ollama", url) as ollama:
            body = {"model": "nomic-embed-text:latest", "input": ["alpha", "beta"]}
            floats = CreateEmbeddingResponse.model_validate_json(
                (await ollama.embed(Call(model="nomic-embed-text:latest", body=body))).body
            )
            b64 = orjson.loads(
                (
                    await ollama.embed(
                        Call(model="nomic-embed-text:latest", body={**body, "encoding_format": "base64"})
                    )
                ).body
            )
    assert [d.index for d in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 8
    decoded = [list(struct.unpack("<8f", base64.b64decode(d["embedding"]))) for d in b64["data"]]
    assert decoded == [d.embedding for d in floats.data]
    assert floats.usage.prompt_tokens > 0


async def test_ollama_behind_an_authenticating_proxy() -> None:
    with sim(family="ollama", api_key=KEY) as url:
        async with provider("ollama", url, api_key=KEY) as ollama:
            assert (await ollama.list_models())[0].id
        async with provider("ollama", url, api_key="wrong") as ollama:
            with pytest.raises(UpstreamStatusError) as exc:
                await ollama.chat(chat_call("llama3.2:3b", USER))
    assert classify(exc.value, now=0.0).auth_failure


async def test_ollama_dropped_stream_is_broken() -> None:
    with sim(family="ollama", drop_after_chunks=2) as url:
        async with provider("ollama", url) as ollama:
            stream = await ollama.stream_chat(chat_call("llama3.2:3b", USER, stream=True))
            with pytest.raises(StreamBroken):
                await collect(stream)


async def test_ollama_garbage_is_a_protocol_error() -> None:
    with sim(family="ollama", garbage=True) as url:
        async with provider("ollama", url) as ollama:
            with pytest.raises(UpstreamProtocolError):
                await ollama.chat(chat_call("llama3.2:3b", USER))
            with pytest.raises(UpstreamProtocolError):
                await collect(await ollama.stream_chat(chat_call("llama3.2:3b", USER, stream=True)))


async def test_refused_connection() -> None:
    url = closed_port()
    async with provider("ollama", url) as ollama:
        with pytest.raises(UpstreamConnectError):
            await ollama.list_models()
        with pytest.raises(UpstreamConnectError):
            await ollama.stream_chat(chat_call("llama3.2:3b", USER))
    async with provider("anthropic", url, api_key=KEY) as claude:
        with pytest.raises(UpstreamConnectError):
            await claude.chat(chat_call("claude-sonnet-4-6", USER))


async def test_unsupported_parameters_never_reach_the_backend() -> None:
    with sim(family="ollama", fail_status=500) as url:
        async with provider("ollama", url) as ollama:
            with pytest.raises(UnsupportedParameter):
                await ollama.chat(chat_call("llama3.2:3b", USER, n=2))


# --- anthropic ----------------------------------------------------------------------------------


async def test_anthropic_list_models() -> None:
    with sim(family="anthropic", api_key=KEY, models=["claude-sonnet-4-6", "claude-3-5-haiku-latest"]) as url:
        async with provider("anthropic", url + "/v1", api_key=KEY) as claude:
            models = await claude.list_models()
    assert [m.id for m in models] == ["claude-sonnet-4-6", "claude-3-5-haiku-latest"]
    assert all(m.types == {"chat"} and {"tools", "vision"} <= m.capabilities for m in models)
    assert models[0].context_length == 8192  # the sim's max_input_tokens


async def test_anthropic_chat_and_stream() -> None:
    with sim(family="anthropic", api_key=KEY) as url:
        async with provider("anthropic", url, api_key=KEY) as claude:
            messages = [{"role": "system", "content": "be brief"}, *USER]
            reply = await claude.chat(chat_call("claude-sonnet-4-6", messages))
            chunks = await collect(
                await claude.stream_chat(
                    chat_call(
                        "claude-sonnet-4-6", messages, stream=True, stream_options={"include_usage": True}
                    )
                )
            )
    completion = ChatCompletion.model_validate_json(reply.body)
    assert completion.id.startswith("msg_")
    assert completion.choices[0].message.content == "Hello from claude-sonnet-4-6. You said: hi there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    content, _, finish = assemble(chunks)
    assert content == completion.choices[0].message.content
    assert finish == "stop"
    assert chunks[0]["id"].startswith("msg_")
    assert chunks[-1]["usage"]["completion_tokens"] > 0


async def test_anthropic_tool_round_trip_with_thinking() -> None:
    with sim(family="anthropic", api_key=KEY) as url:
        async with provider("anthropic", url, api_key=KEY) as claude:
            call = chat_call("claude-sonnet-4-6", USER, tools=[WEATHER])
            call.effort = "medium"
            first = ChatCompletion.model_validate_json((await claude.chat(call)).body)
            message = first.choices[0].message
            [tool_call] = message.tool_calls or []
            history = [
                *USER,
                message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": tool_call.id, "content": "sunny, 21C"},
            ]
            second = ChatCompletion.model_validate_json(
                (await claude.chat(chat_call("claude-sonnet-4-6", history, tools=[WEATHER]))).body
            )
            streamed = await collect(
                await claude.stream_chat(
                    chat_call("claude-sonnet-4-6", USER, tools=[WEATHER], reasoning_effort="low", stream=True)
                )
            )
    assert first.choices[0].finish_reason == "tool_calls"
    assert tool_call.id.startswith("toolu_")
    assert orjson.loads(tool_call.function.arguments) == {"city": "sim"}
    extra = message.model_extra or {}
    assert extra["reasoning_content"]
    assert extra["thinking_blocks"][0]["signature"]
    assert "The tool said: sunny, 21C" in (second.choices[0].message.content or "")
    _, calls, finish = assemble(streamed)
    assert finish == "tool_calls"
    assert [(c["name"], orjson.loads(c["arguments"])) for c in calls] == [("weather", {"city": "sim"})]
    assert any(c["choices"] and c["choices"][0]["delta"].get("reasoning_content") for c in streamed)


async def test_anthropic_has_no_completions_or_embeddings() -> None:
    async with provider("anthropic", closed_port()) as claude:
        call = Call(
            model="claude-sonnet-4-6", body={"model": "claude-sonnet-4-6", "prompt": "x", "input": "x"}
        )
        for method in (claude.complete, claude.stream_complete, claude.embed):
            with pytest.raises(UnsupportedParameter):
                await method(call)


async def test_anthropic_wrong_key_is_an_auth_failure() -> None:
    with sim(family="anthropic", api_key=KEY) as url:
        async with provider("anthropic", url, api_key="wrong") as claude:
            with pytest.raises(UpstreamStatusError) as exc:
                await claude.list_models()
            assert classify(exc.value, now=0.0).auth_failure
            with pytest.raises(UpstreamStatusError) as exc:
                await claude.stream_chat(chat_call("claude-sonnet-4-6", USER))
            assert exc.value.upstream_status == 401


async def test_anthropic_overloaded_is_retryable() -> None:
    with sim(family="anthropic", api_key=KEY, fail_status=529) as url:
        async with provider("anthropic", url, api_key=KEY) as claude:
            with pytest.raises(UpstreamStatusError) as exc:
                await claude.chat(chat_call("claude-sonnet-4-6", USER))
    assert exc.value.upstream_status == 529
    assert classify(exc.value, now=0.0).retryable


async def test_anthropic_dropped_stream_is_broken() -> None:
    with sim(family="anthropic", api_key=KEY, drop_after_chunks=2) as url:
        async with provider("anthropic", url, api_key=KEY) as claude:
            stream = await claude.stream_chat(chat_call("claude-sonnet-4-6", USER, stream=True))
            with pytest.raises(StreamBroken):
                await collect(stream)


async def test_anthropic_garbage_is_a_protocol_error() -> None:
    with sim(family="anthropic", api_key=KEY, garbage=True) as url:
        async with provider("anthropic", url, api_key=KEY) as claude:
            with pytest.raises(UpstreamProtocolError):
                await claude.chat(chat_call("claude-sonnet-4-6", USER))
            with pytest.raises(UpstreamProtocolError):
                await collect(await claude.stream_chat(chat_call("claude-sonnet-4-6", USER, stream=True)))
