"""OpenAI format ⇄ Ollama native API: the pure translation functions, no server."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from laneway.errors import (
    InvalidRequest,
    StreamBroken,
    UnsupportedParameter,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from laneway.providers.base import Call
from laneway.providers.ollama import api_base
from laneway.providers.ollama_request import chat_request, embed_request, generate_request
from laneway.providers.ollama_response import (
    chat_response,
    embed_response,
    generate_response,
    model_info,
    tag_names,
)
from laneway.providers.ollama_stream import (
    ChatStream,
    GenerateStream,
    chat_stream,
    generate_stream,
    parse_line,
)

PNG = "iVBORw0KGgo="


def call(body: dict[str, Any], effort: str | None = None, model: str = "llama3.2:3b") -> Call:
    return Call(model=model, body={"model": model, **body}, effort=effort)


def chat(body: dict[str, Any], effort: str | None = None) -> dict[str, Any]:
    return chat_request(call(body, effort), stream=False)


USER = [{"role": "user", "content": "hi"}]


# --- requests -----------------------------------------------------------------------------------


def test_system_and_developer_messages_stay_system_messages() -> None:
    out = chat(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ]
        }
    )
    assert out["model"] == "llama3.2:3b"
    assert out["stream"] is False
    assert out["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "and kind"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]
    assert "options" not in out
    assert "tools" not in out
    assert "think" not in out


def test_tool_call_round_trip_names_the_tool_of_each_result() -> None:
    out = chat(
        {
            "messages": [
                {"role": "user", "content": "weather in Oslo and Rome?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        },
                        {"id": "c2", "type": "function", "function": {"name": "clock", "arguments": ""}},
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "3C"},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "noon"}]},
            ],
            "tools": [
                {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
            ],
            "tool_choice": "auto",
        }
    )
    assert out["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "Oslo"}}},
            {"function": {"name": "clock", "arguments": {}}},
        ],
    }
    assert out["messages"][2] == {"role": "tool", "content": "3C", "tool_name": "weather"}
    assert out["messages"][3] == {"role": "tool", "content": "noon", "tool_name": "clock"}
    assert out["tools"] == [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    ]


def test_tool_choice_none_sends_no_tools() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert "tools" not in chat({"messages": USER, "tools": tools, "tool_choice": "none"})
    # a forced choice is emulated: tests/providers/test_ollama_structured.py


def test_bad_tool_arguments_are_the_clients_fault() -> None:
    bad = {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{nope"}}]}
    with pytest.raises(InvalidRequest):
        chat({"messages": [*USER, bad]})


def test_inline_images_become_base64_and_urls_are_refused() -> None:
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    out = chat({"messages": [{"role": "user", "content": content}]})
    assert out["messages"] == [{"role": "user", "content": "what is this?", "images": [PNG]}]
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(UnsupportedParameter):
        chat({"messages": [{"role": "user", "content": remote}]})


def test_sampling_options() -> None:
    out = chat(
        {
            "messages": USER,
            "temperature": 0.2,
            "top_p": 0.9,
            "max_completion_tokens": 64,
            "max_tokens": 999,
            "stop": "END",
            "seed": 7,
        }
    )
    assert out["options"] == {"temperature": 0.2, "top_p": 0.9, "num_predict": 64, "stop": ["END"], "seed": 7}
    assert chat({"messages": USER, "stop": ["a", "b"], "max_tokens": 5})["options"] == {
        "stop": ["a", "b"],
        "num_predict": 5,
    }
    with pytest.raises(InvalidRequest):
        chat({"messages": USER, "max_tokens": 0})


def test_response_format_becomes_format() -> None:
    assert chat({"messages": USER, "response_format": {"type": "json_object"}})["format"] == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert chat({"messages": USER, "response_format": rf})["format"] == schema
    assert "format" not in chat({"messages": USER, "response_format": {"type": "text"}})


def test_effort_turns_thinking_on() -> None:
    assert chat_request(call({"messages": USER}, "high"), stream=False, thinks=True)["think"] is True
    assert chat({"messages": USER, "reasoning_effort": "low"})["think"] is True
    assert chat({"messages": USER, "reasoning_effort": "none"}, effort="high")["think"] is False
    with pytest.raises(InvalidRequest):
        chat({"messages": USER, "reasoning_effort": "extreme"})


def test_route_effort_skips_models_known_not_to_think() -> None:
    def think(body: dict[str, Any], thinks: bool | None) -> Any:
        return chat_request(call({"messages": USER, **body}, effort="low"), stream=False, thinks=thinks).get(
            "think"
        )

    assert think({}, thinks=True) is True
    assert think({}, thinks=False) is None  # Ollama would answer 400 to think: true
    assert think({}, thinks=None) is None  # not discovered yet: a thinking model thinks anyway
    # the client asked for it, but discovery showed the model cannot: answered without thinking
    assert think({"reasoning_effort": "high"}, thinks=False) is None
    assert think({"reasoning_effort": "high"}, thinks=None) is True  # not known: as asked


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "logprobs"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
    ],
)
def test_unsupported_parameters(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedParameter) as exc:
        chat({"messages": USER, **extra})
    assert exc.value.param == param
    assert exc.value.status == 422


def test_malformed_messages() -> None:
    for messages in ([], "hi", [{"content": "no role"}], [{"role": "wizard", "content": "x"}]):
        with pytest.raises(InvalidRequest):
            chat({"messages": messages})


def test_generate_request_is_raw_unless_filling_in_the_middle() -> None:
    out = generate_request(call({"prompt": ["def f():"], "max_tokens": 16}), stream=True)
    assert out == {
        "model": "llama3.2:3b",
        "stream": True,
        "options": {"num_predict": 16},
        "prompt": "def f():",
        "raw": True,
    }
    fim = generate_request(call({"prompt": "def f():", "suffix": "return 1"}), stream=False)
    assert fim["suffix"] == "return 1"
    assert "raw" not in fim
    for bad, param in (
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, 2]}, "prompt"),
        ({"prompt": "a", "echo": True}, "echo"),
    ):
        with pytest.raises(UnsupportedParameter) as exc:
            generate_request(call(bad), stream=False)
        assert exc.value.param == param


def test_embed_request() -> None:
    assert embed_request(call({"input": "a"})) == {"model": "llama3.2:3b", "input": "a"}
    assert embed_request(call({"input": ["a", "b"], "dimensions": 8}))["dimensions"] == 8
    with pytest.raises(UnsupportedParameter):
        embed_request(call({"input": [[1, 2, 3]]}))
    with pytest.raises(InvalidRequest):
        embed_request(call({"input": "a", "encoding_format": "hex"}))


# --- answers ------------------------------------------------------------------------------------


def test_chat_response() -> None:
    data = {
        "model": "llama3.2:3b",
        "message": {"role": "assistant", "content": "Hello!", "thinking": "greet"},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 10,
        "eval_count": 3,
    }
    out = chat_response(data, model="fallback")
    assert out["id"].startswith("chatcmpl-")
    assert out["object"] == "chat.completion"
    assert out["model"] == "llama3.2:3b"
    assert isinstance(out["created"], int)
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello!", "reasoning_content": "greet"}
    assert choice["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    truncated = chat_response({**data, "done_reason": "length"}, model="m")
    assert truncated["choices"][0]["finish_reason"] == "length"


def test_chat_response_with_tool_calls() -> None:
    data = {
        "model": "m",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
        },
        "done": True,
        "done_reason": "stop",
    }
    out = chat_response(data, model="m")
    message = out["choices"][0]["message"]
    assert message["content"] is None
    [tc] = message["tool_calls"]
    assert tc["type"] == "function"
    assert tc["id"].startswith("call-")
    assert tc["function"] == {"name": "weather", "arguments": '{"city":"Oslo"}'}
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"]["total_tokens"] == 0


def test_garbage_answers_are_protocol_errors() -> None:
    for data in ({}, {"message": "text"}, {"message": {"content": 5}}, {"message": {}, "eval_count": "many"}):
        with pytest.raises(UpstreamProtocolError):
            chat_response(data, model="m", backend="b")
    with pytest.raises(UpstreamProtocolError):
        generate_response({"done": True}, model="m")
    with pytest.raises(UpstreamProtocolError):
        embed_response({"embeddings": [["x"]]}, model="m")
    with pytest.raises(UpstreamStatusError):
        chat_response({"error": "model not loaded"}, model="m")


def test_generate_response() -> None:
    data = {"model": "m", "response": " return 1", "done": True, "done_reason": "length", "eval_count": 4}
    out = generate_response(data, model="m")
    assert out["object"] == "text_completion"
    assert out["id"].startswith("cmpl-")
    assert out["choices"] == [{"index": 0, "text": " return 1", "logprobs": None, "finish_reason": "length"}]
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 4, "total_tokens": 4}


def test_embed_response_float_and_base64() -> None:
    data = {"model": "nomic", "embeddings": [[0.5, -1.0], [0.25, 2.0]], "prompt_eval_count": 6}
    out = embed_response(data, model="m")
    assert out == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, -1.0]},
            {"object": "embedding", "index": 1, "embedding": [0.25, 2.0]},
        ],
        "model": "nomic",
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
    b64 = embed_response(data, model="m", encoding_format="base64")
    raw = base64.b64decode(b64["data"][1]["embedding"])
    assert struct.unpack("<2f", raw) == (0.25, 2.0)


# --- streams ------------------------------------------------------------------------------------


def lines(*objs: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in (parse_line(orjson.dumps(o)) for o in objs) if o is not None]


def run(stream: ChatStream | GenerateStream, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        out.extend(stream.feed(e))
    stream.close()
    return out


def test_chat_stream() -> None:
    stream = chat_stream(call({"messages": USER, "stream_options": {"include_usage": True}}))
    chunks = run(
        stream,
        lines(
            {"model": "m", "message": {"role": "assistant", "content": "Hel"}, "done": False},
            {"model": "m", "message": {"role": "assistant", "content": ""}, "done": False},
            {"model": "m", "message": {"role": "assistant", "content": "lo"}, "done": False},
            {
                "model": "m",
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 5,
                "eval_count": 2,
            },
        ),
    )
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_chat_stream_tool_calls_and_no_usage_unless_asked() -> None:
    stream = chat_stream(call({"messages": USER}))
    chunks = run(
        stream,
        lines(
            {
                "model": "m",
                "message": {
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "a", "arguments": {"x": 1}}},
                        {"function": {"name": "b", "arguments": {}}},
                    ],
                },
                "done": False,
            },
            {"model": "m", "message": {"content": ""}, "done": True, "done_reason": "stop"},
        ),
    )
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]
    ]
    assert [(c["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "a", '{"x":1}'),
        (1, "b", "{}"),
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["choices"] for c in chunks)


def test_chat_stream_thinking_becomes_reasoning_content() -> None:
    chunks = run(
        chat_stream(call({"messages": USER})),
        lines(
            {"model": "m", "message": {"content": "", "thinking": "Let me"}, "done": False},
            {"model": "m", "message": {"content": "Hi"}, "done": False},
            {"model": "m", "message": {"content": ""}, "done": True, "done_reason": "stop"},
        ),
    )
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[1:3] == [{"reasoning_content": "Let me"}, {"content": "Hi"}]


def test_stream_without_done_is_broken() -> None:
    stream = chat_stream(call({"messages": USER}))
    stream.feed({"model": "m", "message": {"content": "Hel"}, "done": False})
    with pytest.raises(StreamBroken):
        stream.close()


def test_stream_error_line_and_garbage() -> None:
    stream = chat_stream(call({"messages": USER}))
    with pytest.raises(UpstreamStatusError, match="runner crashed"):
        stream.feed({"error": "runner crashed"})
    with pytest.raises(UpstreamProtocolError):
        parse_line(b"<html>")
    with pytest.raises(UpstreamProtocolError):
        parse_line(b"[1, 2]")
    assert parse_line(b"  ") is None
    with pytest.raises(UpstreamProtocolError):
        chat_stream(call({"messages": USER})).feed({"message": {"content": ["x"]}})


def test_generate_stream() -> None:
    stream = generate_stream(call({"prompt": "a", "stream_options": {"include_usage": True}}))
    chunks = run(
        stream,
        lines(
            {"model": "m", "response": "b", "done": False},
            {
                "model": "m",
                "response": "",
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 1,
                "eval_count": 1,
            },
        ),
    )
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["b", ""]
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 2
    assert all(c["object"] == "text_completion" for c in chunks)


# --- discovery ----------------------------------------------------------------------------------


def test_model_info_from_show() -> None:
    show = {
        "capabilities": ["completion", "tools", "vision", "thinking"],
        "model_info": {"general.architecture": "qwen3", "qwen3.context_length": 40960},
    }
    info = model_info("qwen3:8b", show)
    assert info.types == {"chat", "completion"}
    assert {"tools", "vision", "reasoning"} <= info.capabilities
    assert info.context_length == 40960
    embed = model_info("nomic-embed-text:latest", {"capabilities": ["embedding"], "model_info": {}})
    assert embed.types == {"embedding"}
    assert embed.context_length is None


def test_model_info_falls_back_to_the_name() -> None:
    assert model_info("mxbai-embed-large", None).types == {"embedding"}
    assert model_info("llama3.2:3b", None).types == {"chat", "completion"}
    assert model_info("llama3.2:3b", {"model_info": "garbage"}).context_length is None


def test_tag_names() -> None:
    assert tag_names({"models": [{"name": "a:1"}, {"model": "b"}, {"size": 1}]}) == ["a:1", "b"]
    with pytest.raises(UpstreamProtocolError):
        tag_names({"models": "none"})


def test_api_base() -> None:
    for url in ("http://h:11434", "http://h:11434/", "http://h:11434/v1", "http://h:11434/api"):
        assert api_base(url) == "http://h:11434"
