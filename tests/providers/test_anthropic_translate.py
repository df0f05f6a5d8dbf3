"""OpenAI format ⇄ Anthropic Messages API: the pure translation functions, no server."""

from __future__ import annotations

from typing import Any

import pytest

from laneway import sse
from laneway.errors import (
    InvalidRequest,
    StreamBroken,
    UnsupportedParameter,
    UpstreamProtocolError,
    UpstreamStatusError,
    classify,
)
from laneway.providers.anthropic import api_root
from laneway.providers.anthropic_request import messages_request
from laneway.providers.anthropic_response import message_response, model_page
from laneway.providers.anthropic_stream import MessageStream, event_data, message_stream
from laneway.providers.base import Call

PNG = "iVBORw0KGgo="
USER = [{"role": "user", "content": "hi"}]


def call(body: dict[str, Any], effort: str | None = None, model: str = "claude-sonnet-4-6") -> Call:
    return Call(model=model, body={"model": model, **body}, effort=effort)


def req(body: dict[str, Any], effort: str | None = None, stream: bool = False) -> dict[str, Any]:
    return messages_request(call(body, effort), stream=stream)


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


# --- requests -----------------------------------------------------------------------------------


def test_system_messages_go_to_the_top_and_max_tokens_defaults() -> None:
    out = req(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ]
        }
    )
    assert out == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 4096,
        "system": "be brief\n\nand kind",
        "messages": [
            {"role": "user", "content": [text("hi")]},
            {"role": "assistant", "content": [text("hello")]},
            {"role": "user", "content": [text("again")]},
        ],
    }
    assert req({"messages": USER}, stream=True)["stream"] is True


def test_sampling_parameters_and_user() -> None:
    out = req(
        {
            "messages": USER,
            "temperature": 0.3,
            "top_p": 0.8,
            "max_tokens": 50,
            "stop": "END",
            "user": "u-1",
            "seed": 1,
        }
    )
    assert out["temperature"] == 0.3
    assert out["top_p"] == 0.8
    assert out["max_tokens"] == 50
    assert out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "u-1"}
    assert "seed" not in out
    assert req({"messages": USER, "max_completion_tokens": 9, "stop": ["a", "b"]})["stop_sequences"] == [
        "a",
        "b",
    ]
    assert req({"messages": USER, "max_completion_tokens": 9})["max_tokens"] == 9


def test_tool_round_trip_and_merged_tool_results() -> None:
    out = req(
        {
            "messages": [
                {"role": "user", "content": "weather in Oslo and Rome?"},
                {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        },
                        {
                            "id": "t2",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "t1", "content": "3C"},
                {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "21C"}]},
                {"role": "user", "content": "thanks; which is warmer?"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "weather",
                        "description": "current weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    },
                },
                {"type": "function", "function": {"name": "clock"}},
            ],
        }
    )
    assert out["messages"] == [
        {"role": "user", "content": [text("weather in Oslo and Rome?")]},
        {
            "role": "assistant",
            "content": [
                text("Let me look."),
                {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "t2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "3C"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "21C"},
                text("thanks; which is warmer?"),
            ],
        },
    ]
    assert out["tools"] == [
        {
            "name": "weather",
            "description": "current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: dict[str, Any]) -> None:
    body: dict[str, Any] = {"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert req(body)["tool_choice"] == expected


def test_images() -> None:
    content = [
        text("compare"),
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]
    out = req({"messages": [{"role": "user", "content": content}]})
    assert out["messages"][0]["content"] == [
        text("compare"),
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    tiff = [{"type": "image_url", "image_url": {"url": f"data:image/tiff;base64,{PNG}"}}]
    with pytest.raises(UnsupportedParameter):
        req({"messages": [{"role": "user", "content": tiff}]})
    with pytest.raises(InvalidRequest):
        req(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]}
                ]
            }
        )


@pytest.mark.parametrize(
    ("effort", "body", "budget", "max_tokens"),
    [
        ("low", {}, 1024, 4096),
        ("medium", {}, 4096, 8192),
        ("high", {}, 16384, 16384 + 4096),
        (None, {"reasoning_effort": "high", "max_tokens": 20000}, 16384, 20000),
        ("low", {"reasoning_effort": "medium", "max_tokens": 100}, 4096, 4196),
    ],
)
def test_effort_becomes_a_thinking_budget(
    effort: str | None, body: dict[str, Any], budget: int, max_tokens: int
) -> None:
    out = req({"messages": USER, "temperature": 0.2, **body}, effort=effort)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert out["max_tokens"] == max_tokens > budget
    assert "temperature" not in out  # Anthropic refuses sampling overrides with thinking on


def test_thinking_and_forced_tools() -> None:
    body = {
        "messages": USER,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "required",
    }
    assert "thinking" not in req(body, effort="high")  # the route's effort yields
    with pytest.raises(UnsupportedParameter) as exc:
        req({**body, "reasoning_effort": "low"})
    assert exc.value.param == "tool_choice"
    assert "thinking" not in req({"messages": USER, "reasoning_effort": "none"}, effort="high")


def test_thinking_only_for_models_that_can() -> None:
    old = call({"messages": USER}, effort="high", model="claude-3-5-haiku-20241022")
    assert "thinking" not in messages_request(old, stream=False)
    old.body["reasoning_effort"] = "low"
    with pytest.raises(UnsupportedParameter) as exc:
        messages_request(old, stream=False)
    assert exc.value.param == "reasoning_effort"
    sonnet37 = call({"messages": USER}, effort="low", model="claude-3-7-sonnet-latest")
    assert messages_request(sonnet37, stream=False)["thinking"]["budget_tokens"] == 1024


def test_thinking_blocks_are_replayed() -> None:
    block = {"type": "thinking", "thinking": "hmm", "signature": "sig"}
    assistant = {
        "role": "assistant",
        "content": None,
        "thinking_blocks": [block],
        "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    history = [*USER, assistant, {"role": "tool", "tool_call_id": "t1", "content": "ok"}]
    out = req({"messages": history}, effort="low")
    assert out["messages"][1]["content"][0] == block
    assert out["thinking"]["budget_tokens"] == 1024
    # the same turn sent back without its thinking block: Anthropic would refuse thinking
    del assistant["thinking_blocks"]
    assert "thinking" not in req({"messages": history}, effort="low")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 3}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
    ],
)
def test_unsupported_parameters(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedParameter) as exc:
        req({"messages": USER, **extra})
    assert exc.value.param == param
    assert exc.value.status == 422


def test_harmless_defaults_are_accepted() -> None:
    out = req(
        {
            "messages": USER,
            "n": 1,
            "logprobs": False,
            "frequency_penalty": 0,
            "response_format": {"type": "text"},
        }
    )
    assert "response_format" not in out


def test_malformed_requests() -> None:
    for messages in (
        [],
        [{"role": "system", "content": "only a system prompt"}],
        [{"role": "tool", "content": "no id"}],
        [{"role": "user", "content": 5}],
        [{"role": "function", "content": "legacy"}],
    ):
        with pytest.raises(InvalidRequest):
            req({"messages": messages})


# --- answers ------------------------------------------------------------------------------------


def message(**overrides: Any) -> dict[str, Any]:
    data = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [text("Hello"), text(" there")],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 4},
    }
    data.update(overrides)
    return data


def test_message_response() -> None:
    out = message_response(message(), model="fallback")
    assert out["id"] == "msg_01"
    assert out["object"] == "chat.completion"
    assert out["model"] == "claude-sonnet-4-5-20250929"
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_finish_reasons(stop_reason: str, finish: str) -> None:
    assert (
        message_response(message(stop_reason=stop_reason), model="m")["choices"][0]["finish_reason"] == finish
    )


def test_message_response_with_tools_thinking_and_cache() -> None:
    out = message_response(
        message(
            content=[
                {"type": "thinking", "thinking": "they want weather", "signature": "sig"},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
            ],
            stop_reason="tool_use",
            usage={
                "input_tokens": 2,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 10,
                "output_tokens": 7,
            },
        ),
        model="m",
    )
    msg = out["choices"][0]["message"]
    assert msg["content"] is None
    assert msg["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    ]
    assert msg["reasoning_content"] == "they want weather"
    assert msg["thinking_blocks"] == [
        {"type": "thinking", "thinking": "they want weather", "signature": "sig"}
    ]
    assert out["usage"] == {
        "prompt_tokens": 112,
        "completion_tokens": 7,
        "total_tokens": 119,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


def test_garbage_and_error_bodies() -> None:
    no_id = {k: v for k, v in message().items() if k != "id"}
    for bad in ({}, message(content="text"), message(content=[{"type": "text"}]), message(usage=None), no_id):
        with pytest.raises(UpstreamProtocolError):
            message_response(bad, model="m", backend="b")
    with pytest.raises(UpstreamStatusError) as exc:
        message_response(
            {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, model="m"
        )
    assert exc.value.upstream_status == 529
    assert classify(exc.value, now=0.0).retryable


# --- streams ------------------------------------------------------------------------------------


def stream_lines(*events: tuple[str, dict[str, Any]]) -> list[bytes]:
    import orjson

    lines: list[bytes] = []
    for name, data in events:
        lines += [b"event: " + name.encode(), b"data: " + orjson.dumps({"type": name, **data}), b""]
    return lines


def decode(lines: list[bytes]) -> list[dict[str, Any]]:
    """The events of a stream of ``lines``, as the adapter reads them: the codec's events (not
    closed at the end: an event without its blank line is dropped), each one's JSON."""
    decoder = sse.Decoder()
    return [event_data(e) for e in decoder.feed(b"".join(line + b"\n" for line in lines))]


def run(stream: MessageStream, lines: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for event in decode(lines):
        out.extend(stream.feed(event))
    stream.close()
    return out


START = (
    "message_start",
    {"message": {"id": "msg_9", "model": "claude-x", "usage": {"input_tokens": 9, "output_tokens": 1}}},
)
STOP = ("message_stop", {})


def test_text_stream_with_usage() -> None:
    stream = message_stream(call({"messages": USER, "stream_options": {"include_usage": True}}))
    chunks = run(
        stream,
        stream_lines(
            START,
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ("ping", {}),
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
            ("content_block_stop", {"index": 0}),
            ("message_delta", {"delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 5}}),
            STOP,
        ),
    )
    assert all(
        c["id"] == "msg_9" and c["model"] == "claude-x" and c["object"] == "chat.completion.chunk"
        for c in chunks
    )
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}


def test_tool_and_thinking_stream() -> None:
    stream = message_stream(call({"messages": USER}))
    chunks = run(
        stream,
        stream_lines(
            START,
            ("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
            ("content_block_stop", {"index": 0}),
            (
                "content_block_start",
                {
                    "index": 1,
                    "content_block": {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {}},
                },
            ),
            ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            (
                "content_block_delta",
                {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city":'}},
            ),
            (
                "content_block_delta",
                {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'}},
            ),
            ("content_block_stop", {"index": 1}),
            (
                "content_block_start",
                {
                    "index": 2,
                    "content_block": {"type": "tool_use", "id": "toolu_b", "name": "clock", "input": {}},
                },
            ),
            ("content_block_stop", {"index": 2}),
            ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}}),
            STOP,
        ),
    )
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[1] == {"reasoning_content": "hmm"}
    assert deltas[2] == {"thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}]}
    assert deltas[3] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "toolu_a",
                "type": "function",
                "function": {"name": "weather", "arguments": ""},
            }
        ]
    }
    assert deltas[4] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}
    assert deltas[5] == {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}
    assert deltas[6]["tool_calls"][0]["index"] == 1
    assert deltas[6]["tool_calls"][0]["id"] == "toolu_b"
    assert deltas[7] == {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert len(chunks) == 9  # no usage chunk unless asked


def test_stream_without_message_stop_is_broken() -> None:
    stream = message_stream(call({"messages": USER}))
    for event in decode(
        stream_lines(
            START, ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": "x"}})
        )
    ):
        stream.feed(event)
    with pytest.raises(StreamBroken):
        stream.close()


@pytest.mark.parametrize(
    ("kind", "status"),
    [("overloaded_error", 529), ("rate_limit_error", 429), ("api_error", 500), ("mystery", 500)],
)
def test_error_event_raises_a_status_error(kind: str, status: int) -> None:
    stream = message_stream(call({"messages": USER}))
    stream.feed(decode(stream_lines(START))[0])
    with pytest.raises(UpstreamStatusError) as exc:
        stream.feed({"type": "error", "error": {"type": kind, "message": "try later"}})
    assert exc.value.upstream_status == status


def test_garbage_stream_events() -> None:
    with pytest.raises(UpstreamProtocolError):
        decode([b"data: {not json", b""])
    with pytest.raises(UpstreamProtocolError):
        message_stream(call({"messages": USER})).feed(
            {"type": "content_block_start", "index": 0}
        )  # before message_start
    stream = message_stream(call({"messages": USER}))
    stream.feed(decode(stream_lines(START))[0])
    with pytest.raises(UpstreamProtocolError):
        stream.feed({"type": "content_block_delta", "index": 7, "delta": {"type": "text_delta", "text": "x"}})
    with pytest.raises(UpstreamProtocolError):
        stream.feed({"type": "message_start"})


def test_sse_decoder_details() -> None:
    lines = [b": comment", b"event: ping", b"data: {}", b"", b'data: {"type":', b'data: "message_stop"}', b""]
    assert decode(lines) == [{"type": "ping"}, {"type": "message_stop"}]
    # an event cut off before its blank line never counts: that stream is broken, not finished
    assert decode([b'data: {"type": "message_stop"}']) == []
    # the name is the type only when the data has none, and an unnamed event names nothing
    assert decode([b"event: ping", b'data: {"type": "pong"}', b"", b'data: {"a": 1}', b""]) == [
        {"type": "pong"},
        {"a": 1},
    ]


# --- discovery ----------------------------------------------------------------------------------


def test_model_pages() -> None:
    page = {
        "data": [
            {"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5"},
            {"type": "model", "id": "claude-3-5-haiku-20241022"},
            {"type": "model"},
        ],
        "has_more": True,
        "first_id": "claude-sonnet-4-5-20250929",
        "last_id": "claude-3-5-haiku-20241022",
    }
    models, after = model_page(page)
    assert after == "claude-3-5-haiku-20241022"
    assert [m.id for m in models] == ["claude-sonnet-4-5-20250929", "claude-3-5-haiku-20241022"]
    assert all(m.types == {"chat"} and {"tools", "vision"} <= m.capabilities for m in models)
    assert "reasoning" in models[0].capabilities
    assert "reasoning" not in models[1].capabilities
    assert models[0].context_length == 200_000
    assert model_page({**page, "has_more": False})[1] is None
    with pytest.raises(UpstreamProtocolError):
        model_page({"data": None})


def test_api_root() -> None:
    assert api_root("https://api.anthropic.com") == "https://api.anthropic.com/v1"
    assert api_root("https://api.anthropic.com/v1/") == "https://api.anthropic.com/v1"
