"""End to end: the official openai SDK, sync and async, against the gateway in front of
`laneway sim` in each of its three personalities."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from laneway.operations import OPERATIONS, Operation
from tests.conftest import RunningGateway

FAMILY_MODELS = [
    pytest.param("llama3.2:3b", "gpu-1", id="ollama"),
    pytest.param("gpt-4o-mini", "oai", id="openai"),
    pytest.param("claude-sonnet-4-6", "claude", id="anthropic"),
]


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_chat_non_streamed_each_family(gw: RunningGateway, model: str, backend: str) -> None:
    raw = client(gw).chat.completions.with_raw_response.create(
        model=model,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello to laneway"},
        ],
        max_tokens=50,
    )
    completion = raw.parse()
    assert raw.headers["x-laneway-backend"] == backend
    assert raw.headers["x-laneway-model"] == model
    assert raw.headers["x-laneway-attempts"] == "1"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert completion.model == model


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_chat_streamed_each_family(gw: RunningGateway, model: str, backend: str) -> None:
    with client(gw).chat.completions.with_streaming_response.create(
        model=model,
        messages=[{"role": "user", "content": "Stream to me"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["x-laneway-backend"] == backend
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage
    assert usage[-1].completion_tokens > 0


@pytest.mark.anyio
@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
async def test_async_client_chat_and_stream(gw: RunningGateway, model: str, backend: str) -> None:
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as aclient:
        completion = await aclient.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "async hello"}]
        )
        assert completion.choices[0].message.content
        stream = await aclient.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "async stream"}], stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(pieces).strip()
        embedding = await aclient.embeddings.create(model="embed", input="async embedding")
        assert len(embedding.data[0].embedding) > 0


@pytest.mark.parametrize("model", ["nomic-embed-text:latest", "text-embedding-3-small", "embed"])
def test_embeddings(gw: RunningGateway, model: str) -> None:
    c = client(gw)
    result = c.embeddings.create(model=model, input=["first text", "second text"])  # SDK asks for base64
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == len(result.data[1].embedding) > 0
    assert result.data[0].embedding != result.data[1].embedding
    floats = c.embeddings.create(model=model, input="first text", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(result.data[0].embedding, rel=1e-6)


def test_model_listing_has_models_and_routes(gw: RunningGateway) -> None:
    ids = {m.id for m in client(gw).models.list()}
    assert {"llama3.2:3b", "gpt-4o-mini", "claude-sonnet-4-6", "text-embedding-3-small"} <= ids
    assert {"smart", "fast", "embed"} <= ids


def test_backend_slash_model_and_route_names(gw: RunningGateway) -> None:
    c = client(gw)
    by_backend = c.chat.completions.with_raw_response.create(
        model="gpu-1/llama3.2:3b", messages=[{"role": "user", "content": "hi"}]
    )
    assert by_backend.headers["x-laneway-backend"] == "gpu-1"
    assert by_backend.parse().model == "llama3.2:3b"
    routed = c.chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": "hi"}]
    )
    assert routed.headers["x-laneway-backend"] == "claude"
    lane = routed.headers["x-laneway-lane"]
    by_lane = c.chat.completions.with_raw_response.create(
        model=lane, messages=[{"role": "user", "content": "hi"}]
    )
    assert by_lane.headers["x-laneway-lane"] == lane


def test_route_tries_next_entry_when_first_fails(gw: RunningGateway) -> None:
    gw.sims["anthropic"].options.fail_status = 500
    gw.sims["anthropic"].options.fail_rate = 1.0
    raw = client(gw).chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-laneway-backend"] == "oai"
    assert raw.headers["x-laneway-attempts"] == "2"


@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "llama3.2:3b", "gpt-4o-mini"])
def test_tool_call_round_trip(gw: RunningGateway, model: str) -> None:
    c = client(gw)
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    messages: Any = [{"role": "user", "content": "Weather in Oslo?"}]
    first = c.chat.completions.create(model=model, messages=messages, tools=tools)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert '"city"' in call.function.arguments
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny and 21C"},
    ]
    second = c.chat.completions.create(model=model, messages=messages, tools=tools)
    assert "sunny and 21C" in (second.choices[0].message.content or "")


@pytest.mark.parametrize("model", ["gpt-4o-mini", "llama3.2:3b"])
def test_text_completions(gw: RunningGateway, model: str) -> None:
    c = client(gw)
    done = c.completions.create(model=model, prompt="Once upon a time", max_tokens=5)
    assert done.choices[0].text
    assert done.choices[0].finish_reason == "length"
    streamed = "".join(
        ch.choices[0].text for ch in c.completions.create(model=model, prompt="Hi", stream=True)
    )
    assert streamed.strip()


def test_stream_cut_after_first_byte_ends_with_error_event(gw: RunningGateway) -> None:
    gw.sims["ollama"].options.drop_after_chunks = 2
    stream = client(gw).chat.completions.create(
        model="llama3.2:3b", messages=[{"role": "user", "content": "a long answer please"}], stream=True
    )
    received: list[object] = []
    with pytest.raises(openai.APIError) as excinfo:
        received.extend(stream)
    assert received, "the first chunks reached the client before the break"
    assert "broke off" in str(excinfo.value) or "dropped" in str(excinfo.value)


ASKS: dict[Operation, dict[str, Any]] = {
    Operation.CHAT: {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    Operation.COMPLETION: {"model": "gpt-4o-mini", "prompt": "Once"},
    Operation.EMBEDDING: {"model": "embed", "input": "a text"},
}


@pytest.mark.anyio
@pytest.mark.parametrize("op", list(OPERATIONS), ids=str)
async def test_each_operation_is_served_at_its_path_and_streams_only_if_the_map_says(
    gw: RunningGateway, op: Operation
) -> None:
    spec = OPERATIONS[op]
    url, auth = gw.url + spec.path, {"authorization": f"Bearer {gw.key}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={**ASKS[op], "stream": True}, headers=auth) as asked:
            assert asked.status == 200, await asked.text()
            await asked.read()
        kind = asked.headers["content-type"]
        assert kind.startswith("text/event-stream") if spec.streams else kind == "application/json"
        # the request shape is the operation's own: without its one required field, a 400 names it
        required = next(k for k in ASKS[op] if k != "model")
        async with http.post(url, json={"model": ASKS[op]["model"]}, headers=auth) as bare:
            assert bare.status == 400
            assert (await bare.json())["error"]["param"] == required
