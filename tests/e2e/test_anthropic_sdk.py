"""End to end: the official anthropic SDK through laneway's ``/v1/messages`` to sims of every
family. The anthropic-family lane serves the client's body natively; the Ollama and OpenAI lanes
serve it translated to OpenAI chat and back. The sim checks what it receives as Anthropic's API
would (signatures of thinking blocks), and reports cache writes for ``cache_control``: that is
how these tests see that a native request reached the lane as it was sent."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest

from laneway import sse
from laneway.logs import JsonFormatter
from tests.conftest import ANTHROPIC_KEY, CLIENT_KEY, RunningGateway, Sim

FAMILIES = [
    pytest.param("llama3.2:3b", "gpu-1", id="ollama"),
    pytest.param("gpt-4o-mini", "oai", id="openai"),
    pytest.param("claude-haiku-4-5", "claude", id="anthropic"),
]
NATIVE = "claude-haiku-4-5"
SIM_SIGNATURE = "c2ltLXNpZ25hdHVyZQ=="  # what the sim signs its thinking with
WEATHER: Any = [
    {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
ASK: Any = [{"role": "user", "content": "weather in Paris?"}]


def client(gw: RunningGateway, key: str = CLIENT_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def raw_events(gw: RunningGateway, **params: Any) -> tuple[dict[str, str], list[sse.Event]]:
    """The stream's response headers and its events exactly as laneway sent them."""
    with client(gw).messages.with_streaming_response.create(stream=True, **params) as response:
        body = b"".join(response.iter_bytes())
        return dict(response.headers), list(sse.parse(body))


def assert_anthropic_order(names: list[str]) -> None:
    """message_start, then blocks (start, deltas, stop), message_delta, message_stop; pings may
    come anywhere after message_start (Anthropic sends one after its first block starts, laneway's
    translation one right after message_start), and there is at least one."""
    assert names[0] == "message_start", names
    assert "ping" in names, names
    names = [n for n in names if n != "ping"]
    assert names[-2:] == ["message_delta", "message_stop"], names
    body = names[1:-2]
    assert body, names
    i = 0
    while i < len(body):
        assert body[i] == "content_block_start", names
        i += 1
        while body[i] == "content_block_delta":
            i += 1
        assert body[i] == "content_block_stop", names
        i += 1


@pytest.mark.parametrize(("model", "backend"), FAMILIES)
def test_create_each_family(gw: RunningGateway, model: str, backend: str) -> None:
    raw = client(gw).messages.with_raw_response.create(
        model=model,
        max_tokens=100,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": "Say hello to laneway"}],
        metadata={"user_id": "user-1"},
        extra_body={"temperature": 0.5, "top_k": 40},
    )
    message = raw.parse()
    assert raw.headers["x-laneway-backend"] == backend
    assert raw.headers["x-laneway-model"] == model
    assert message.id.startswith("msg_")
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith(f"Hello from {model}.")
    assert "Say hello to laneway" in message.content[0].text
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0


@pytest.mark.parametrize(("model", "backend"), FAMILIES)
def test_stream_in_anthropics_event_order_each_family(gw: RunningGateway, model: str, backend: str) -> None:
    headers, events = raw_events(
        gw, model=model, max_tokens=100, messages=[{"role": "user", "content": "Stream to me"}]
    )
    assert headers["x-laneway-backend"] == backend
    assert headers["content-type"].startswith("text/event-stream")
    names = [e.event for e in events]
    assert_anthropic_order(names)
    assert all(e.json()["type"] == e.event for e in events)
    deltas = [e.json()["delta"] for e in events if e.event == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"text_delta"}
    assert "".join(d["text"] for d in deltas).startswith(f"Hello from {model}.")
    end = next(e.json() for e in events if e.event == "message_delta")
    assert end["delta"]["stop_reason"] == "end_turn"
    assert end["usage"]["output_tokens"] > 0

    with client(gw).messages.stream(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "Stream to me"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith(f"Hello from {model}.")
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize(("model", "backend"), FAMILIES)
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_tools_over_two_turns_each_family(
    gw: RunningGateway, model: str, backend: str, streamed: bool
) -> None:
    c = client(gw)
    if streamed:
        with c.messages.stream(model=model, max_tokens=100, messages=ASK, tools=WEATHER) as stream:
            first = stream.get_final_message()
    else:
        first = c.messages.create(model=model, max_tokens=100, messages=ASK, tools=WEATHER)
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "get_weather"
    assert call.input == {"city": "sim"}
    assert call.id
    history: Any = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
    ]
    second = c.messages.create(
        model=model,
        max_tokens=100,
        tools=WEATHER,
        messages=[
            *history,
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "rain, 12C"}],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"
    assert "The tool said: rain, 12C" in second.content[0].text


@pytest.mark.parametrize(("model", "backend"), FAMILIES[:2])
def test_a_tool_error_is_said_in_the_translated_tool_content(
    gw: RunningGateway, model: str, backend: str
) -> None:
    turn: Any = [
        *ASK,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such city", "is_error": True}
            ],
        },
    ]
    answer = client(gw).messages.create(model=model, max_tokens=100, tools=WEATHER, messages=turn)
    assert answer.content[0].type == "text"
    assert "The tool said: Error: no such city" in answer.content[0].text


def test_thinking_natively_streams_thinking_and_signature_deltas(gw: RunningGateway) -> None:
    params: Any = {
        "model": NATIVE,
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [{"role": "user", "content": "think first"}],
    }
    _, events = raw_events(gw, **params)
    assert_anthropic_order([e.event for e in events])
    kinds = [e.json()["delta"]["type"] for e in events if e.event == "content_block_delta"]
    assert kinds[0] == "thinking_delta"
    assert "signature_delta" in kinds
    assert kinds[-1] == "text_delta"
    whole = client(gw).messages.create(**params)
    assert [b.type for b in whole.content] == ["thinking", "text"]
    assert whole.content[0].type == "thinking"
    assert whole.content[0].signature == SIM_SIGNATURE


def test_thinking_translated_for_an_ollama_lane(gw: RunningGateway) -> None:
    params: Any = {
        "model": "llama3.2:3b",
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [{"role": "user", "content": "think first"}],
    }
    whole = client(gw).messages.create(**params)
    assert [b.type for b in whole.content] == ["thinking", "text"]
    assert whole.content[0].type == "thinking"
    assert whole.content[0].thinking.startswith("Let me think")
    # (The Ollama sim streams no thinking: the stream's translation of it is tested on its own.)


def test_a_signed_thinking_turn_goes_back_to_the_anthropic_lane_as_it_was(gw: RunningGateway) -> None:
    c = client(gw)
    params: Any = {
        "model": NATIVE,
        "max_tokens": 4096,
        "tools": WEATHER,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    first = c.messages.create(messages=ASK, **params)
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    call = first.content[1]
    assert call.type == "tool_use"
    turn = [b.model_dump(exclude_none=True) for b in first.content]
    result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
    }
    second = c.messages.create(messages=[*ASK, {"role": "assistant", "content": turn}, result], **params)
    assert "The tool said: sunny" in next(b.text for b in second.content if b.type == "text")
    # The sim checks signatures as Anthropic does: one laneway altered would have been refused.
    forged = [{**turn[0], "signature": "forged"}, turn[1]]
    with pytest.raises(anthropic.BadRequestError) as refused:
        c.messages.create(messages=[*ASK, {"role": "assistant", "content": forged}, result], **params)
    assert refused.value.status_code == 400
    assert "signature" in refused.value.message


def test_cache_control_reaches_the_anthropic_lane(gw: RunningGateway) -> None:
    system: Any = [
        {"type": "text", "text": "You are a careful assistant with a long shared preamble."},
        {"type": "text", "text": "Stay on topic.", "cache_control": {"type": "ephemeral"}},
    ]
    answer = client(gw).messages.create(
        model=NATIVE, max_tokens=100, system=system, messages=[{"role": "user", "content": "hello"}]
    )
    assert answer.usage.cache_creation_input_tokens == 13  # the words up to the breakpoint
    assert answer.usage.input_tokens == 1
    plain = client(gw).messages.create(
        model="llama3.2:3b", max_tokens=100, system=system, messages=[{"role": "user", "content": "hello"}]
    )
    assert plain.content[0].type == "text"  # translated: cache_control has no meaning there, and is dropped


def test_beta_messages_with_the_query_string_and_beta_header(gw: RunningGateway) -> None:
    for model in ("claude-haiku-4-5", "llama3.2:3b"):
        answer = client(gw).beta.messages.create(
            model=model,
            max_tokens=100,
            messages=[{"role": "user", "content": "beta hello"}],
            betas=["interleaved-thinking-2025-05-14"],
        )
        assert answer.content[0].type == "text"
        assert "beta hello" in answer.content[0].text


def test_count_tokens_exact_on_the_anthropic_lane_estimated_elsewhere(gw: RunningGateway) -> None:
    c = client(gw)
    messages: Any = [{"role": "user", "content": "count these five words"}]
    exact = c.messages.with_raw_response.count_tokens(model=NATIVE, messages=messages, system="be kind")
    assert exact.headers["x-laneway-token-count"] == "exact"
    assert exact.parse().input_tokens == 6  # the sim counts words: its own count, not an estimate
    guess = c.messages.with_raw_response.count_tokens(model="llama3.2:3b", messages=messages, tools=WEATHER)
    assert guess.headers["x-laneway-token-count"] == "estimated"
    assert guess.parse().input_tokens > 6
    with pytest.raises(anthropic.NotFoundError):
        c.messages.count_tokens(model="no-such-model", messages=messages)


def test_count_tokens_falls_back_to_an_estimate_when_the_anthropic_lane_fails(gw: RunningGateway) -> None:
    gw.sims["anthropic"].options.fail_metadata_paths = ["/v1/messages/count_tokens"]
    counted = client(gw).messages.with_raw_response.count_tokens(
        model=NATIVE, messages=[{"role": "user", "content": "hello"}]
    )
    assert counted.headers["x-laneway-token-count"] == "estimated"
    assert counted.parse().input_tokens >= 1


def test_models_in_anthropics_shape(gw: RunningGateway) -> None:
    models = list(client(gw).models.list())
    ids = [m.id for m in models]
    assert {"claude-haiku-4-5", "llama3.2:3b", "gpt-4o-mini", "smart", "fast"} <= set(ids)
    assert not any("embed" in i for i in ids)  # the Messages API only chats
    assert all(m.type == "model" for m in models)
    page = client(gw).models.list(limit=2)
    assert [m.id for m in page.data] == ids[:2]
    assert page.has_more
    assert [m.id for m in page.get_next_page().data] == ids[2:4]


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_model_is_a_not_found_error(gw: RunningGateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(gw).messages.create(model="no-such-model", max_tokens=10, messages=ASK)
    body: Any = missing.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "no-such-model" in body["error"]["message"]
    assert body["request_id"] == missing.value.response.headers["x-request-id"]


def test_a_bad_body_is_a_bad_request_error_naming_the_field(gw: RunningGateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client(gw).messages.create(model=NATIVE, max_tokens=10, messages=[{"role": "robot", "content": "hi"}])  # type: ignore[typeddict-item]
    body: Any = bad.value.body
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("messages.0.role:")


def test_a_wrong_key_is_an_authentication_error(gw: RunningGateway) -> None:
    with pytest.raises(anthropic.AuthenticationError) as denied:
        client(gw, key="not-a-key").messages.create(model=NATIVE, max_tokens=10, messages=ASK)
    body: Any = denied.value.body
    assert body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("status", [529, 503])
@pytest.mark.parametrize("family", ["anthropic", "ollama"])
def test_an_overloaded_lane_is_an_overloaded_error(gw: RunningGateway, status: int, family: str) -> None:
    gw.sims[family].options.fail_status = status
    model = NATIVE if family == "anthropic" else "llama3.2:3b"
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        client(gw).messages.create(model=model, max_tokens=10, messages=ASK)
    body: Any = overloaded.value.body
    assert overloaded.value.status_code == 529
    assert body["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize(("model", "family"), [("llama3.2:3b", "ollama"), (NATIVE, "anthropic")])
def test_a_stream_broken_mid_way_ends_with_an_anthropic_error_event(
    gw: RunningGateway, model: str, family: str
) -> None:
    sim: Sim = gw.sims[family]
    sim.options.drop_after_chunks = 2
    sim.options.tokens_per_second = 4  # the first bytes are surely with the client before the break
    _, events = raw_events(gw, model=model, max_tokens=100, messages=ASK)
    assert events[0].event == "message_start"
    last = events[-1]
    assert last.event == "error"
    error = last.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"
    assert "broke off" in error["error"]["message"]
    with (
        pytest.raises(anthropic.APIStatusError) as broken,
        client(gw).messages.stream(model=model, max_tokens=100, messages=ASK) as stream,
    ):
        stream.get_final_message()
    assert "broke off" in broken.value.message


# --- failover, usage and the access log ---------------------------------------------------------


def failover_config(sims: dict[str, Sim], data_dir: Path) -> dict[str, Any]:
    return {
        "storage": {"data_dir": str(data_dir)},
        "auth": {"keys": [{"name": "tests", "key": CLIENT_KEY}]},
        "backends": {
            "claude": {"provider": "anthropic", "base_url": sims["anthropic"].url, "api_key": ANTHROPIC_KEY},
            "gpu-1": {"provider": "ollama", "base_url": sims["ollama"].url},
        },
        "routes": {"coder": ["claude/claude-haiku-4-5", "gpu-1/llama3.2:3b"]},
    }


def access_line(caplog: pytest.LogCaptureFixture, request_id: str) -> dict[str, Any]:
    """The access line of ``request_id``: waited for (a stream's is written as its last body
    message goes out, which may be just after the client read it); a bound, not a timing."""
    formatter = JsonFormatter()
    for _ in range(500):
        lines = [
            orjson.loads(formatter.format(r)) for r in list(caplog.records) if r.name == "laneway.access"
        ]
        found = [line for line in lines if line["request_id"] == request_id]
        if found:
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no access line for {request_id}")


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_failing_anthropic_lane_fails_over_to_ollama_translated(
    gateway_factory: Any,
    three_sims: dict[str, Sim],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    streamed: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="laneway.access")
    three_sims["anthropic"].options.fail_status = 500
    gw = gateway_factory(failover_config(three_sims, tmp_path / "gw"), three_sims)
    c = client(gw)
    if streamed:
        with c.messages.with_streaming_response.create(
            model="coder", max_tokens=100, messages=ASK, stream=True
        ) as response:
            headers = response.headers
            events = list(sse.parse(b"".join(response.iter_bytes())))
        assert_anthropic_order([e.event for e in events])
        usage = next(e.json() for e in events if e.event == "message_delta")["usage"]
    else:
        raw = c.messages.with_raw_response.create(model="coder", max_tokens=100, messages=ASK)
        headers = raw.headers
        message = raw.parse()
        assert message.content[0].type == "text"
        assert message.content[0].text.startswith("Hello from llama3.2:3b.")
        usage = message.usage.model_dump()
    assert headers["x-laneway-backend"] == "gpu-1"
    assert headers["x-laneway-attempts"] == "2"
    assert three_sims["anthropic"].stats.failures_injected == 1
    line = access_line(caplog, headers["x-request-id"])
    assert line["operation"] == "chat"
    assert line["dialect"] == "anthropic"
    assert line["path"] == "/v1/messages"
    assert line["backend"] == "gpu-1"
    assert line["attempts"] == 2
    assert line["streamed"] is streamed
    assert line["prompt_tokens"] == usage["input_tokens"] > 0
    assert line["completion_tokens"] == usage["output_tokens"] > 0


@pytest.mark.parametrize("model", ["gpt-4o-mini", NATIVE])
def test_tool_choice_forces_or_forbids_a_tool(gw: RunningGateway, model: str) -> None:
    c = client(gw)
    lookup: Any = [*WEATHER, {"name": "lookup", "input_schema": {"type": "object", "properties": {}}}]
    forced = c.messages.create(
        model=model,
        max_tokens=100,
        messages=ASK,
        tools=lookup,
        tool_choice={"type": "tool", "name": "lookup"},
    )
    assert forced.stop_reason == "tool_use"
    assert [b.name for b in forced.content if b.type == "tool_use"] == ["lookup"]
    anything = c.messages.create(
        model=model, max_tokens=100, messages=ASK, tools=lookup, tool_choice={"type": "any"}
    )
    assert anything.stop_reason == "tool_use"
    never = c.messages.create(
        model=model, max_tokens=100, messages=ASK, tools=lookup, tool_choice={"type": "none"}
    )
    assert never.stop_reason == "end_turn"
    assert never.content[0].type == "text"


@pytest.mark.parametrize(("model", "reason"), [(NATIVE, "stop_sequence"), ("gpt-4o-mini", "end_turn")])
def test_stop_sequences(gw: RunningGateway, model: str, reason: str) -> None:
    answer = client(gw).messages.create(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}], stop_sequences=["You said"]
    )
    assert answer.content[0].type == "text"
    assert answer.content[0].text == f"Hello from {model}."
    # An OpenAI lane does not say which stop string ended its answer: end_turn (vLLM's does).
    assert answer.stop_reason == reason
