"""The sim against the real clients: the official openai and anthropic SDKs, and raw HTTP for Ollama."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from click.testing import CliRunner

from laneway.clock import ManualClock
from laneway.sim import SimApp, SimOptions, build_sim_app
from laneway.testing import ServerThread

WEATHER_OPENAI: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    }
]
WEATHER_ANTHROPIC: Any = [
    {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[tuple[SimApp, str]]:
    """One sim for the module (starting and stopping uvicorn costs more than most tests)."""
    app = build_sim_app()
    with ServerThread(app) as url:
        yield app, url


@pytest.fixture
def serve(shared_sim: tuple[SimApp, str]) -> Any:
    """``with serve(options) as (app, url)``: the shared sim, reconfigured and reset; a sim of
    its own when the test brings a ManualClock."""

    @contextmanager
    def serve(
        options: SimOptions | None = None, clock: ManualClock | None = None
    ) -> Iterator[tuple[SimApp, str]]:
        options = options or SimOptions()
        if clock is not None:
            own = build_sim_app(options, clock=clock)
            with ServerThread(own) as own_url:
                yield own, own_url
            return
        app, url = shared_sim
        options.validate()
        app.options = options
        app.reset()
        yield app, url

    return serve


@functools.cache
def oai(url: str, key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


@functools.cache
def claude(url: str, key: str = "sk-ant-test") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def http(
    url: str,
    body: Any = None,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


async def read_into(response: aiohttp.ClientResponse, buffer: bytearray) -> None:
    async for chunk in response.content.iter_any():
        buffer += chunk


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- OpenAI ------------------------------------------------------------------------------------


def test_openai_chat_plain_and_streamed_agree(serve: Any) -> None:
    with serve() as (app, url):
        client = oai(url)
        messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert reply.id.startswith("chatcmpl-")
        assert reply.object == "chat.completion"
        assert reply.choices[0].finish_reason == "stop"
        text = reply.choices[0].message.content
        assert text == "Hello from gpt-4o-mini. You said: hi there"
        assert reply.usage is not None
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 7)

        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert "".join(pieces) == text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.total_tokens == 11
        assert app.stats.streams_completed == 1
        assert app.stats.active_streams == 0


def test_openai_max_tokens_stop_and_images(serve: Any) -> None:
    with serve() as (_, url):
        client = oai(url)
        cut = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "one two"}], max_tokens=2
        )
        assert cut.choices[0].message.content == "Hello from"
        assert cut.choices[0].finish_reason == "length"
        stopped = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stop=["mini"]
        )
        assert stopped.choices[0].message.content == "Hello from gpt-4o-"
        assert stopped.choices[0].finish_reason == "stop"
        image: Any = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
        seen = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": [{"type": "text", "text": "what is this"}, image, image]}],
        )
        assert "I received 2 images." in (seen.choices[0].message.content or "")


def test_openai_tool_calls_plain_streamed_and_answered(serve: Any) -> None:
    with serve() as (_, url):
        client = oai(url)
        ask: Any = [{"role": "user", "content": "weather in Paris?"}]
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=ask, tools=WEATHER_OPENAI)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None
        call = choice.message.tool_calls[0]
        assert call.type == "function"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "sim", "days": 1}  # required ones, filled

        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=ask,
            tools=WEATHER_OPENAI,
            stream=True,
        )
        chunks = list(stream)
        first = chunks[0].choices[0].delta.tool_calls
        assert first is not None
        assert first[0].id
        assert first[0].function is not None
        assert first[0].function.name == "get_weather"
        arguments = "".join(
            (tc.function.arguments or "")
            for c in chunks
            for tc in (c.choices[0].delta.tool_calls or [])
            if tc.function is not None
        )
        assert json.loads(arguments) == {"city": "sim", "days": 1}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"

        answered = client.chat.completions.create(
            model="gpt-4o-mini",
            tools=WEATHER_OPENAI,
            messages=[
                *ask,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call.id, "content": "sunny and 21C"},
            ],
        )
        assert answered.choices[0].finish_reason == "stop"
        assert "sunny and 21C" in (answered.choices[0].message.content or "")


def test_openai_completions_embeddings_and_models(serve: Any) -> None:
    with serve() as (_, url):
        client = oai(url)
        done = client.completions.create(model="gpt-4o-mini", prompt="Say hi", max_tokens=3)
        assert done.object == "text_completion"
        assert done.choices[0].text == "Hello from gpt-4o-mini."
        assert done.choices[0].finish_reason == "length"
        streamed = list(
            client.completions.create(
                model="gpt-4o-mini", prompt="Say hi", stream=True, stream_options={"include_usage": True}
            )
        )
        assert (
            "".join(c.choices[0].text for c in streamed if c.choices)
            == "Hello from gpt-4o-mini. You said: Say hi"
        )
        assert streamed[-1].usage is not None

        default = client.embeddings.create(
            model="text-embedding-3-small", input=["alpha", "beta"]
        )  # base64 on the wire
        floats = client.embeddings.create(
            model="text-embedding-3-small", input=["alpha", "beta"], encoding_format="float"
        )
        assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
        assert len(floats.data[0].embedding) == 16
        assert floats.data[0].embedding != floats.data[1].embedding
        assert abs(sum(v * v for v in floats.data[0].embedding) - 1.0) < 1e-5
        assert default.usage.prompt_tokens == 2
        again = client.embeddings.create(
            model="text-embedding-3-small", input="alpha", encoding_format="float"
        )
        assert again.data[0].embedding == floats.data[0].embedding  # deterministic
        _, _, raw = http(
            url + "/v1/embeddings",
            {"model": "text-embedding-3-small", "input": "alpha", "encoding_format": "base64"},
            headers={"authorization": "Bearer k"},
        )
        packed = base64.b64decode(json.loads(raw)["data"][0]["embedding"])
        assert list(struct.unpack("<16f", packed)) == floats.data[0].embedding

        ids = [m.id for m in client.models.list()]
        assert ids == ["gpt-4o-mini", "text-embedding-3-small"]


def test_openai_errors_unknown_model_malformed_and_capability(serve: Any) -> None:
    with serve() as (_, url):
        client = oai(url)
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
        assert missing.value.code == "model_not_found"
        assert missing.value.param == "model"
        status, _, raw = http(url + "/v1/chat/completions", b"{not json")
        assert status == 400
        assert json.loads(raw)["error"]["type"] == "invalid_request_error"
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model="gpt-4o-mini", input="x")
        status, _, raw = http(url + "/v1/nothing", {})
        assert status == 404
        assert "error" in json.loads(raw)


# -- Anthropic ---------------------------------------------------------------------------------


def test_anthropic_messages_plain_and_streamed(serve: Any) -> None:
    # claude-haiku-4-5: the anthropic SDK warns (an error here) about the deprecated claude-sonnet-4-6
    with serve(SimOptions(family="anthropic")) as (app, url):
        client = claude(url)
        message = client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=100,
            system=[{"type": "text", "text": "Be brief."}],
            messages=[{"role": "user", "content": "hello there"}],
        )
        assert message.id.startswith("msg_")
        assert message.stop_reason == "end_turn"
        assert message.content[0].type == "text"
        assert message.content[0].text == "Hello from claude-haiku-4-5. You said: hello there"
        assert message.usage.input_tokens == 4

        with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=3, messages=[{"role": "user", "content": "hello there"}]
        ) as stream:
            events = [event.type for event in stream]
            final = stream.get_final_message()
        assert final.content[0].type == "text"
        assert final.content[0].text == "Hello from claude-haiku-4-5."
        assert final.stop_reason == "max_tokens"
        assert final.usage.output_tokens == 3
        assert events[0] == "message_start"
        assert events[-1] == "message_stop"
        assert "content_block_start" in events
        assert "message_delta" in events

        stopped = client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=50,
            stop_sequences=["haiku"],
            messages=[{"role": "user", "content": "x"}],
        )
        assert stopped.stop_reason == "stop_sequence"
        assert stopped.stop_sequence == "haiku"
        assert stopped.content[0].type == "text"
        assert stopped.content[0].text == "Hello from claude-"

        models = client.models.list()
        assert [m.id for m in models.data] == ["claude-sonnet-4-6", "claude-haiku-4-5"]
        assert models.first_id == "claude-sonnet-4-6"
        assert models.has_more is False
        assert (
            client.messages.count_tokens(
                model="claude-haiku-4-5", messages=[{"role": "user", "content": "a b c"}]
            ).input_tokens
            == 3
        )
        assert app.stats.streams_completed == 1


def test_anthropic_tools_images_and_thinking(serve: Any) -> None:
    with serve() as (_, url):  # the openai personality serves /v1/messages too
        client = claude(url)
        ask: Any = [{"role": "user", "content": "weather in Paris?"}]
        used = client.messages.create(
            model="gpt-4o-mini", max_tokens=100, messages=ask, tools=WEATHER_ANTHROPIC
        )
        assert used.stop_reason == "tool_use"
        block = used.content[0]
        assert block.type == "tool_use"
        assert block.name == "get_weather"
        assert block.input == {"city": "sim"}
        assert block.id.startswith("toolu_")

        with client.messages.stream(
            model="gpt-4o-mini",
            max_tokens=100,
            messages=ask,
            tools=WEATHER_ANTHROPIC,
            thinking={"type": "enabled", "budget_tokens": 1024},
        ) as stream:
            final = stream.get_final_message()
        assert [b.type for b in final.content] == ["thinking", "tool_use"]
        streamed_tool = final.content[1]
        assert streamed_tool.type == "tool_use"
        assert streamed_tool.input == {"city": "sim"}

        picture: Any = {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "aGk="},
        }
        result = client.messages.create(
            model="gpt-4o-mini",
            max_tokens=100,
            tools=WEATHER_ANTHROPIC,
            messages=[
                *ask,
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": block.id, "name": "get_weather", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": block.id, "content": "rain, 12C"},
                        picture,
                    ],
                },
            ],
        )
        assert result.stop_reason == "end_turn"
        text = result.content[0].text if result.content[0].type == "text" else ""
        assert "rain, 12C" in text
        assert "I received 1 image." in text


def test_anthropic_request_errors(serve: Any) -> None:
    with serve() as (_, url):
        status, _, raw = http(url + "/v1/messages", {"model": "gpt-4o-mini", "messages": []})
        assert status == 400
        assert "anthropic-version" in json.loads(raw)["error"]["message"]
        version = {"anthropic-version": "2023-06-01"}
        status, _, raw = http(
            url + "/v1/messages",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
            headers=version,
        )
        assert status == 400
        assert json.loads(raw) == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        }
        status, _, raw = http(url + "/v1/messages", b"{oops", headers=version)
        assert status == 400
        assert json.loads(raw)["type"] == "error"
        with pytest.raises(anthropic.NotFoundError) as missing:
            claude(url).messages.create(
                model="claude-9", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        assert missing.value.body == {
            "type": "error",
            "error": {"type": "not_found_error", "message": "model: claude-9"},
        }


# -- Ollama ------------------------------------------------------------------------------------


def test_ollama_chat_streams_by_default_and_generates(serve: Any) -> None:
    with serve(SimOptions(family="ollama")) as (_, url):
        status, headers, raw = http(
            url + "/api/chat",
            {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]},
        )
        assert status == 200
        assert headers["content-type"] == "application/x-ndjson"
        lines = ndjson(raw)
        assert all(not line["done"] for line in lines[:-1])
        text = "".join(line["message"]["content"] for line in lines)
        assert text == "Hello from llama3.2:3b. I received 1 image. You said: hi"
        final = lines[-1]
        assert final["done"] is True
        assert final["done_reason"] == "stop"
        assert final["eval_count"] == len(lines) - 1
        assert final["prompt_eval_count"] == 1
        for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
            assert isinstance(final[key], int)

        _, _, raw = http(
            url + "/api/chat",
            {
                "model": "llama3.2:3b",
                "stream": False,
                "options": {"num_predict": 2},
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        whole = json.loads(raw)
        assert whole["message"] == {"role": "assistant", "content": "Hello from"}
        assert whole["done_reason"] == "length"

        _, _, raw = http(
            url + "/api/chat",
            {
                "model": "llama3.2:3b",
                "stream": False,
                "tools": WEATHER_OPENAI,
                "messages": [{"role": "user", "content": "weather?"}],
            },
        )
        calls = json.loads(raw)["message"]["tool_calls"]
        assert calls[0]["function"]["name"] == "get_weather"
        assert calls[0]["function"]["arguments"] == {"city": "sim", "days": 1}  # an object, not a string

        _, _, raw = http(url + "/api/generate", {"model": "llama3.2", "prompt": "why?"})
        assert json.loads(raw)["error"] == 'model "llama3.2" not found, try pulling it first'
        _, _, raw = http(
            url + "/api/generate", {"model": "llama3.2:3b", "prompt": "why?", "options": {"stop": ["3b"]}}
        )
        lines = ndjson(raw)
        assert "".join(line["response"] for line in lines) == "Hello from llama3.2:"
        assert lines[-1]["done"] is True
        assert lines[-1]["done_reason"] == "stop"

        # Ollama's OpenAI compatibility, and its implicit ":latest"
        floats = oai(url).embeddings.create(model="nomic-embed-text", input="x", encoding_format="float")
        _, _, raw = http(url + "/api/embed", {"model": "nomic-embed-text", "input": ["x"]})
        assert json.loads(raw)["embeddings"] == [floats.data[0].embedding]
        assert oai(url).models.list().data[0].owned_by == "library"


def test_ollama_metadata_endpoints(serve: Any) -> None:
    with serve(SimOptions(family="ollama", context_length=32768)) as (_, url):
        _, _, raw = http(url + "/api/tags")
        tags = json.loads(raw)["models"]
        assert [m["name"] for m in tags] == ["llama3.2:3b", "nomic-embed-text:latest"]
        assert tags[0]["details"]["parameter_size"] == "3B"
        _, _, raw = http(url + "/api/show", {"model": "llama3.2:3b"})
        show = json.loads(raw)
        assert show["model_info"]["llama.context_length"] == 32768
        assert show["capabilities"] == ["completion", "tools"]
        assert show["details"]["family"] == "llama"
        _, _, raw = http(url + "/api/show", {"model": "nomic-embed-text"})
        assert json.loads(raw)["capabilities"] == ["embedding"]
        status, _, raw = http(url + "/api/show", {"model": "nope"})
        assert status == 404
        assert json.loads(raw) == {"error": "model 'nope' not found"}
        assert json.loads(http(url + "/api/ps")[2]) == {"models": []}
        http(url + "/api/chat", {"model": "llama3.2:3b", "stream": False, "messages": []})
        assert [m["name"] for m in json.loads(http(url + "/api/ps")[2])["models"]] == ["llama3.2:3b"]
        assert "version" in json.loads(http(url + "/api/version")[2])
        assert http(url + "/")[2] == b"Ollama is running"
        status, _, raw = http(url + "/api/chat", b"{bad")
        assert status == 400
        assert "error" in json.loads(raw)


# -- auth --------------------------------------------------------------------------------------


def test_auth_in_each_family_shape(serve: Any) -> None:
    options = SimOptions(api_key="good-key-123", forbidden_keys=["banned-key-456"])
    with serve(options) as (_, url):
        with pytest.raises(openai.AuthenticationError) as wrong:
            oai(url, "bad-key-999").chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        assert wrong.value.code == "invalid_api_key"
        with pytest.raises(openai.PermissionDeniedError):
            oai(url, "banned-key-456").models.list()
        with pytest.raises(openai.AuthenticationError):
            oai(url, "nope").models.list()  # discovery is authenticated too
        assert oai(url, "good-key-123").models.list().data

        with pytest.raises(anthropic.AuthenticationError) as denied:
            claude(url, "bad").messages.create(
                model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        assert denied.value.body == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        }
        with pytest.raises(anthropic.PermissionDeniedError) as forbidden:
            claude(url, "banned-key-456").models.list()
        assert isinstance(forbidden.value.body, dict)
        assert forbidden.value.body["error"]["type"] == "permission_error"
        ok = claude(url, "good-key-123").messages.create(
            model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
        assert ok.stop_reason

        status, _, raw = http(url + "/api/tags")
        assert status == 401
        assert json.loads(raw) == {"error": "unauthorized"}
        assert http(url + "/api/tags", headers={"authorization": "Bearer good-key-123"})[0] == 200
        assert http(url + "/_sim/stats")[0] == 200  # the control surface needs no key


# -- injected trouble --------------------------------------------------------------------------


def test_fail_first_then_success_and_fail_status_alone(serve: Any) -> None:
    with serve(SimOptions(fail_first=2, fail_status=503)) as (app, url):
        client = oai(url)
        ask: Any = [{"role": "user", "content": "x"}]
        for _ in range(2):
            with pytest.raises(openai.InternalServerError) as failed:
                client.chat.completions.create(model="gpt-4o-mini", messages=ask)
            assert failed.value.status_code == 503
        assert client.models.list().data  # not an inference endpoint: never fails
        assert client.chat.completions.create(model="gpt-4o-mini", messages=ask).choices
        assert app.stats.failures_injected == 2

        app.options.fail_first = 0
        app.options.fail_status = 529
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            claude(url).messages.create(model="gpt-4o-mini", max_tokens=5, messages=ask)
        assert overloaded.value.status_code == 529
        assert isinstance(overloaded.value.body, dict)
        assert overloaded.value.body["error"]["type"] == "overloaded_error"


def test_fail_retry_after_reaches_the_sdks_as_the_real_apis_send_it(serve: Any) -> None:
    """A 503 (OpenAI) or 529 (Anthropic) that says when to come back: the SDKs read the status,
    the error body in their family's shape, and the Retry-After header."""
    ask: Any = [{"role": "user", "content": "x"}]
    with serve(SimOptions(fail_status=503, fail_retry_after="7")) as (_, url):
        with pytest.raises(openai.InternalServerError) as unavailable:
            oai(url).chat.completions.create(model="gpt-4o-mini", messages=ask)
        assert unavailable.value.status_code == 503
        assert unavailable.value.response.headers["retry-after"] == "7"
        assert isinstance(unavailable.value.body, dict)
        assert "simulated failure" in unavailable.value.body["message"]
    with serve(SimOptions(fail_status=529, fail_retry_after="3")) as (_, url):
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            claude(url).messages.create(model="gpt-4o-mini", max_tokens=5, messages=ask)
        assert overloaded.value.response.headers["retry-after"] == "3"
        assert isinstance(overloaded.value.body, dict)
        assert overloaded.value.body["error"]["type"] == "overloaded_error"
    with serve(SimOptions(fail_status=500)) as (_, url):  # said only when asked (and for a 429)
        with pytest.raises(openai.InternalServerError) as failed:
            oai(url).chat.completions.create(model="gpt-4o-mini", messages=ask)
        assert "retry-after" not in failed.value.response.headers


def test_fail_rate_is_seeded(serve: Any) -> None:
    def outcomes(seed: int) -> list[int]:
        with serve(SimOptions(fail_rate=0.5, fail_status=500, seed=seed)) as (_, url):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
            return [http(url + "/v1/chat/completions", body)[0] for _ in range(12)]

    first = outcomes(7)
    assert first == outcomes(7)
    assert set(first) == {200, 500}


def test_garbage_is_200_and_not_json(serve: Any) -> None:
    with serve(SimOptions(garbage=True)) as (_, url):
        status, _, raw = http(
            url + "/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        )
        assert status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw.decode("latin-1"))


@pytest.mark.anyio
async def test_drop_after_chunks_breaks_the_stream(serve: Any) -> None:
    with serve(SimOptions(drop_after_chunks=2)) as (app, url):
        body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
        received = bytearray()
        async with (
            aiohttp.ClientSession() as session,
            session.post(url + "/v1/chat/completions", json=body) as response,
        ):
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await read_into(response, received)
        frames = [f for f in received.split(b"\n\n") if f]
        assert len(frames) == 3  # the role chunk and two content chunks
        assert b"[DONE]" not in received
        wait_for(lambda: app.stats.streams_dropped == 1)
        assert app.stats.active_streams == 0


@pytest.mark.anyio
async def test_client_leaving_mid_stream_is_counted_as_cancelled(serve: Any) -> None:
    options = SimOptions(family="ollama", tokens_per_second=50, reply="word " * 500)
    with serve(options) as (app, url):
        body = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "go"}]}
        async with aiohttp.ClientSession() as session:
            response = await session.post(url + "/api/chat", json=body)
            assert json.loads(await response.content.readline())["done"] is False
            assert app.stats.active_streams == 1
            response.close()  # drops the connection mid-stream
        wait_for(lambda: app.stats.streams_cancelled == 1)
        assert app.stats.active_streams == 0
        assert app.stats.streams_completed == 0


def test_latency_delays_the_answer(serve: Any) -> None:
    with serve(SimOptions(latency=0.2)) as (_, url):
        started = time.monotonic()
        oai(url).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert time.monotonic() - started >= 0.2


# -- rate limits -------------------------------------------------------------------------------


def test_openai_ratelimit_headers_count_down_exhaust_and_reset(serve: Any) -> None:
    clock = ManualClock()
    with serve(SimOptions(ratelimit="openai", rpm=3, tpm=1000), clock=clock) as (app, url):
        client = oai(url)
        ask: Any = [{"role": "user", "content": "hi"}]
        remaining = []
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=ask)
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-reset-requests"] == "1m0s"
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
            tokens_left = int(raw.headers["x-ratelimit-remaining-tokens"])
        assert remaining == [2, 1, 0]
        assert tokens_left == 1000 - 3 * 7  # 1 prompt + 6 completion tokens each

        clock.advance(20.5)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="gpt-4o-mini", messages=ask)
        assert limited.value.response.headers["retry-after"] == "40"
        assert limited.value.response.headers["x-ratelimit-reset-requests"] == "39.5s"
        assert app.stats.rate_limited == 1

        clock.advance(40)
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=ask)
        assert raw.headers["x-ratelimit-remaining-requests"] == "2"


def test_anthropic_and_openrouter_ratelimit_formats(serve: Any) -> None:
    clock = ManualClock(start=1_700_000_000.0)
    with serve(SimOptions(ratelimit="anthropic", rpm=5, tpm=100), clock=clock) as (app, url):
        raw = claude(url).messages.with_raw_response.create(
            model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "5"
        assert raw.headers["anthropic-ratelimit-requests-remaining"] == "4"
        assert raw.headers["anthropic-ratelimit-requests-reset"] == "2023-11-14T22:14:20Z"  # start + 60 s
        assert raw.headers["anthropic-ratelimit-tokens-remaining"] == str(100 - 7)
        assert raw.headers["anthropic-ratelimit-input-tokens-remaining"] == "99"
        assert raw.headers["anthropic-ratelimit-output-tokens-remaining"] == "94"

        app.options.ratelimit = "openrouter"
        _, headers, _ = http(
            url + "/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        )
        lowered = {k.lower(): v for k, v in headers.items()}
        assert lowered["x-ratelimit-limit"] == "5"
        assert lowered["x-ratelimit-remaining"] == "3"
        assert lowered["x-ratelimit-reset"] == str(1_700_000_060 * 1000)


def test_tokens_per_minute_exhaust_in_anthropic_shape(serve: Any) -> None:
    with serve(SimOptions(ratelimit="anthropic", tpm=10), clock=ManualClock()) as (_, url):
        client = claude(url)
        ask: Any = [{"role": "user", "content": "hi"}]
        client.messages.create(model="gpt-4o-mini", max_tokens=10, messages=ask)
        client.messages.create(model="gpt-4o-mini", max_tokens=10, messages=ask)
        with pytest.raises(anthropic.RateLimitError) as limited:
            client.messages.create(model="gpt-4o-mini", max_tokens=10, messages=ask)
        assert limited.value.response.headers["retry-after"] == "60"
        assert isinstance(limited.value.body, dict)
        assert limited.value.body["error"]["type"] == "rate_limit_error"


# -- control surface, options and CLI ----------------------------------------------------------


def test_control_endpoints_patch_and_reset(serve: Any) -> None:
    with serve() as (app, url):
        oai(url).models.list()
        stats = json.loads(http(url + "/_sim/stats")[2])
        assert stats["total_requests"] == 1
        assert stats["requests_by_path"] == {"/v1/models": 1}
        status, _, raw = http(
            url + "/_sim/options", {"models": ["m1", "embed-2"], "fail_status": 500, "latency": 0}
        )
        assert status == 200
        assert json.loads(raw)["models"] == ["m1", "embed-2"]
        assert app.options.fail_status == 500
        assert app.options.models == ["m1", "embed-2"]
        status, _, raw = http(url + "/_sim/options", {"fail_rate": 3})
        assert status == 400
        assert "fail_rate" in json.loads(raw)["error"]
        status, _, raw = http(url + "/_sim/options", {"colour": "red"})
        assert status == 400
        assert "colour" in json.loads(raw)["error"]
        assert http(url + "/_sim/options", {"models": []})[0] == 200
        assert oai(url).models.list().data == []
        status, _, raw = http(url + "/_sim/reset", {})
        assert status == 200
        assert json.loads(raw)["total_requests"] == 0


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="family"):
        build_sim_app(SimOptions(family="gemini"))
    with pytest.raises(ValueError, match="ratelimit"):
        build_sim_app(SimOptions(ratelimit="azure"))
    with pytest.raises(ValueError, match="models_format"):
        build_sim_app(SimOptions(models_format="gemini"))
    with pytest.raises(ValueError, match="fail_metadata_paths"):
        build_sim_app(SimOptions(fail_metadata_paths=["api/ps"]))
    assert SimOptions(family="ollama").models == ["llama3.2:3b", "nomic-embed-text:latest"]


def test_cli_help_and_bad_values() -> None:
    from laneway.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["sim", "--help"])
    assert result.exit_code == 0
    assert "11434" in result.output
    assert "--models-format [openai|vllm|openrouter]" in result.output
    assert "--hang-discovery" in result.output
    result = runner.invoke(cli, ["sim", "--fail-rate", "2"])
    assert result.exit_code == 2
    assert "--fail-rate" in result.output
    result = runner.invoke(cli, ["sim", "--family", "gemini"])
    assert result.exit_code == 2
    result = runner.invoke(cli, ["sim", "--models-format", "xml"])
    assert result.exit_code == 2
    assert "--models-format" in result.output
    result = runner.invoke(cli, ["sim", "--ratelimit", "openai"])
    assert result.exit_code == 2
    assert "--rpm" in result.output
    with ServerThread(build_sim_app()) as url:  # a busy port is a clear error, not a traceback
        result = runner.invoke(cli, ["sim", "--port", url.rsplit(":", 1)[1]])
    assert result.exit_code == 1
    assert "cannot listen" in result.output


# -- discovery: model-list formats, /api/v1, hangs ---------------------------------------------

VLLM_PERMISSION_TYPES = {
    "id": str,
    "object": str,
    "created": int,
    "allow_create_engine": bool,
    "allow_sampling": bool,
    "allow_logprobs": bool,
    "allow_search_indices": bool,
    "allow_view": bool,
    "allow_fine_tuning": bool,
    "organization": str,
    "group": type(None),
    "is_blocking": bool,
}
OPENROUTER_TYPES = {
    "id": str,
    "canonical_slug": str,
    "name": str,
    "created": int,
    "description": str,
    "context_length": int,
    "architecture": dict,
    "pricing": dict,
    "top_provider": dict,
    "per_request_limits": type(None),
    "supported_parameters": list,
}
OPENROUTER_MODELS = [
    "meta-llama/llama-3.1-8b-instruct:free",
    "openai/gpt-4o",
    "deepseek/deepseek-r1",
    "openai/text-embedding-3-small",
]


def test_vllm_models_format(serve: Any) -> None:
    with serve(SimOptions(models_format="vllm", context_length=32768)) as (_, url):
        _, _, raw = http(url + "/v1/models")
        body = json.loads(raw)
        assert body["object"] == "list"
        assert [m["id"] for m in body["data"]] == ["gpt-4o-mini", "text-embedding-3-small"]
        for card in body["data"]:
            assert set(card) == {
                "id",
                "object",
                "created",
                "owned_by",
                "root",
                "parent",
                "max_model_len",
                "permission",
            }
            assert (card["object"], card["owned_by"], card["root"], card["parent"]) == (
                "model",
                "vllm",
                card["id"],
                None,
            )
            assert isinstance(card["created"], int)
            assert card["max_model_len"] == 32768
            [permission] = card["permission"]
            assert {k: type(v) for k, v in permission.items()} == VLLM_PERMISSION_TYPES
            assert permission["object"] == "model_permission"
            assert permission["id"].startswith("modelperm-")
            assert permission["organization"] == "*"
        assert [m.owned_by for m in oai(url).models.list()] == ["vllm", "vllm"]  # the SDK takes it


def test_openrouter_models_format(serve: Any) -> None:
    options = SimOptions(models_format="openrouter", models=OPENROUTER_MODELS, context_length=131072)
    with serve(options) as (_, url):
        _, _, raw = http(url + "/api/v1/models")
        body = json.loads(raw)
        assert set(body) == {"data"}
        assert http(url + "/v1/models")[2] == raw
        entries = {m["id"]: m for m in body["data"]}
        assert list(entries) == OPENROUTER_MODELS
        for entry in entries.values():
            assert {k: type(v) for k, v in entry.items()} == OPENROUTER_TYPES
            assert entry["context_length"] == 131072
            arch = entry["architecture"]
            assert set(arch) == {
                "modality",
                "input_modalities",
                "output_modalities",
                "tokenizer",
                "instruct_type",
            }
            inputs, outputs = arch["modality"].split("->")
            assert inputs.split("+") == arch["input_modalities"]
            assert outputs.split("+") == arch["output_modalities"]
            assert all(isinstance(p, str) and float(p) >= 0 for p in entry["pricing"].values())
            assert {"prompt", "completion", "request", "image"} <= set(entry["pricing"])
            top = entry["top_provider"]
            assert set(top) == {"context_length", "max_completion_tokens", "is_moderated"}
            assert top["context_length"] == 131072
            assert isinstance(top["is_moderated"], bool)
            assert all(isinstance(p, str) for p in entry["supported_parameters"])

        free = entries["meta-llama/llama-3.1-8b-instruct:free"]
        assert free["canonical_slug"] == "meta-llama/llama-3.1-8b-instruct"
        assert free["name"].endswith("Llama 3.1 8B Instruct (free)")
        assert set(free["pricing"].values()) == {"0"}
        assert free["architecture"]["modality"] == "text->text"
        assert (free["architecture"]["tokenizer"], free["architecture"]["instruct_type"]) == (
            "Llama3",
            "llama3",
        )
        assert {"tools", "tool_choice", "max_tokens"} <= set(free["supported_parameters"])
        assert "reasoning" not in free["supported_parameters"]
        vision = entries["openai/gpt-4o"]
        assert vision["architecture"]["modality"] == "text+image->text"
        assert vision["architecture"]["input_modalities"] == ["text", "image"]
        assert vision["top_provider"]["is_moderated"] is True
        assert isinstance(vision["top_provider"]["max_completion_tokens"], int)
        assert {"reasoning", "include_reasoning", "tools"} <= set(
            entries["deepseek/deepseek-r1"]["supported_parameters"]
        )
        embed = entries["openai/text-embedding-3-small"]
        assert embed["architecture"]["output_modalities"] == ["embeddings"]
        assert "tools" not in embed["supported_parameters"]


def test_openai_routes_are_served_under_api_v1_as_openrouter_does(serve: Any) -> None:
    with serve(SimOptions(models=["openai/gpt-4o", "openai/text-embedding-3-small"])) as (app, url):
        client = openai.OpenAI(base_url=url + "/api/v1", api_key="sk-or-test", max_retries=0)
        ask: Any = [{"role": "user", "content": "hi"}]
        reply = client.chat.completions.create(model="openai/gpt-4o", messages=ask)
        assert reply.choices[0].message.content == "Hello from openai/gpt-4o. You said: hi"
        streamed = list(client.chat.completions.create(model="openai/gpt-4o", messages=ask, stream=True))
        assert streamed[-1].choices[0].finish_reason == "stop"
        assert client.completions.create(model="openai/gpt-4o", prompt="x").choices[0].text
        assert len(client.embeddings.create(model="openai/text-embedding-3-small", input="x").data) == 1
        assert [m.id for m in client.models.list()] == ["openai/gpt-4o", "openai/text-embedding-3-small"]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope/nope", messages=ask)
        status, _, raw = http(url + "/api/v1/nothing", {})
        assert status == 404
        assert json.loads(raw)["error"]["message"] == "Invalid URL (POST /api/v1/nothing)"
        by_path = app.stats.requests_by_path
        assert by_path["/api/v1/chat/completions"] == 3
        assert by_path["/api/v1/models"] == 1
        assert "/v1/chat/completions" not in by_path
        assert http(url + "/api/v1/messages", {})[0] == 404  # only the OpenAI family moved


def test_hang_discovery_holds_model_lists_until_the_client_leaves(serve: Any) -> None:
    with serve(SimOptions(family="ollama", hang_discovery=True)) as (app, url):
        started = time.monotonic()
        for path, body in [
            ("/v1/models", None),
            ("/api/v1/models", None),
            ("/api/tags", None),
            ("/api/ps", None),
            ("/api/show", {"model": "llama3.2:3b"}),
        ]:
            with pytest.raises((TimeoutError, urllib.error.URLError)):
                http(url + path, body, timeout=0.2)
            assert app.stats.requests_by_path[path] == 1
            wait_for(lambda: app.stats.active_hangs == 0)  # the sim saw the client leave
        assert time.monotonic() - started >= 5 * 0.2
        assert app.stats.total_requests == 5
        # inference and the rest of the API still answer
        status, _, raw = http(
            url + "/api/chat", {"model": "llama3.2:3b", "stream": False, "messages": [{"role": "user"}]}
        )
        assert status == 200
        assert json.loads(raw)["done"] is True
        assert http(url + "/api/version", timeout=1)[0] == 200
        assert http(url + "/_sim/stats", timeout=1)[0] == 200


@pytest.mark.anyio
async def test_turning_hang_discovery_off_answers_the_waiting_request(serve: Any) -> None:
    with serve(SimOptions(hang_discovery=True)) as (app, url):
        async with aiohttp.ClientSession() as session:
            waiting = asyncio.ensure_future(session.get(url + "/v1/models"))
            for _ in range(500):  # until the sim holds it
                if app.stats.active_hangs:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            assert not waiting.done()
            assert json.loads(http(url + "/_sim/stats")[2])["active_hangs"] == 1
            async with session.post(url + "/_sim/options", json={"hang_discovery": False}) as patched:
                assert patched.status == 200
            response = await asyncio.wait_for(waiting, 5)
            async with response:
                assert response.status == 200
                assert [m["id"] for m in (await response.json())["data"]] == [
                    "gpt-4o-mini",
                    "text-embedding-3-small",
                ]
            async with session.get(url + "/v1/models") as again:
                assert again.status == 200
        assert app.stats.requests_by_path["/v1/models"] == 2
        assert app.stats.active_hangs == 0


def test_fail_metadata_paths(serve: Any) -> None:
    with serve(SimOptions(family="ollama", fail_metadata_paths=["/api/ps", "/v1/models"])) as (app, url):
        status, _, raw = http(url + "/api/ps")
        assert status == 500
        assert json.loads(raw) == {"error": "simulated failure: 500 Internal Server Error"}
        with pytest.raises(openai.InternalServerError):
            oai(url).models.list()
        assert http(url + "/api/tags")[0] == 200
        assert http(url + "/_sim/options", {"fail_metadata_paths": ["/_sim/stats"]})[0] == 200
        assert http(url + "/_sim/stats")[0] == 200  # the controls never fail
        assert app.stats.failures_injected == 2


def test_discovery_options_are_validated_when_patched(serve: Any) -> None:
    with serve() as (app, url):
        status, _, raw = http(url + "/_sim/options", {"models_format": "xml"})
        assert status == 400
        assert "models_format" in json.loads(raw)["error"]
        status, _, raw = http(url + "/_sim/options", {"hang_discovery": "sometimes"})
        assert status == 400
        assert "hang_discovery" in json.loads(raw)["error"]
        assert app.options.models_format is None
        assert app.options.hang_discovery is False
        status, _, raw = http(url + "/_sim/options", {"models_format": "vllm"})
        assert status == 200
        assert json.loads(raw)["models_format"] == "vllm"
        assert json.loads(http(url + "/v1/models")[2])["data"][0]["owned_by"] == "vllm"
        assert http(url + "/_sim/options", {"models_format": None})[0] == 200
        assert json.loads(http(url + "/v1/models")[2])["data"][0]["owned_by"] == "system"


def test_anthropic_models_carry_context_window_and_capabilities(serve: Any) -> None:
    options = SimOptions(family="anthropic", models=["claude-sonnet-4-6", "claude-3-5-haiku-20241022"])
    options.context_length = 1_000_000
    with serve(options) as (_, url):
        models = claude(url).models.list().data
        sonnet, haiku = models
        assert (sonnet.display_name, haiku.display_name) == ("Claude Sonnet 4.6", "Claude 3.5 Haiku 20241022")
        assert sonnet.max_input_tokens == 1_000_000
        assert sonnet.max_tokens == 64_000
        assert sonnet.lifecycle == "active"
        assert sonnet.line == "sonnet"
        assert sonnet.capabilities is not None
        assert haiku.capabilities is not None
        assert sonnet.capabilities.thinking.supported is True
        assert sonnet.capabilities.image_input.supported is True
        assert haiku.capabilities.thinking.supported is False
        raw = json.loads(http(url + "/v1/models", headers={"anthropic-version": "2023-06-01"})[2])
        assert set(raw["data"][0]["capabilities"]) == {
            "batch",
            "citations",
            "code_execution",
            "context_management",
            "effort",
            "image_input",
            "pdf_input",
            "server_tools",
            "structured_outputs",
            "thinking",
        }
