"""Anthropic Messages requests → OpenAI chat (``dialects.anthropic.request``) and their validation
(``dialects.anthropic.shapes``), as pure functions."""

from __future__ import annotations

from typing import Any

import pytest

from laneway.dialects.anthropic.request import reasoning_effort, to_openai
from laneway.dialects.anthropic.shapes import CountTokensRequest, MessagesRequest, validate
from laneway.errors import InvalidRequest

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_system_as_a_string_or_blocks_leads_the_conversation() -> None:
    assert to_openai(body(system="Be brief."))["messages"][0] == {"role": "system", "content": "Be brief."}
    blocks = [
        {"type": "text", "text": "One."},
        {"type": "text", "text": "Two.", "cache_control": {"type": "ephemeral"}},
    ]
    out = to_openai(body(system=blocks))
    assert out["messages"] == [
        {"role": "system", "content": "One.\n\nTwo."},
        {"role": "user", "content": "hi"},
    ]


def test_a_system_message_mid_conversation_stays_in_place() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "env"}], "output_config": {"effort": "low"}},
    ]
    validate(MessagesRequest, body(messages=messages))
    assert to_openai(body(messages=messages))["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "env"},
    ]


def test_sampling_stops_user_and_stream() -> None:
    out = to_openai(
        body(
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END"],
            metadata={"user_id": "u-1"},
            stream=True,
            service_tier="auto",  # unknown to the translation: not passed on
        )
    )
    assert out == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END"],
        "user": "u-1",
    }


def test_max_tokens_zero_asks_for_one_token() -> None:
    validate(MessagesRequest, body(max_tokens=0))
    assert to_openai(body(max_tokens=0))["max_tokens"] == 1


def test_images_base64_and_url_become_image_url_parts() -> None:
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    (message,) = to_openai(body(messages=[{"role": "user", "content": content}]))["messages"]
    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ],
    }


def test_documents_become_text_or_file_parts() -> None:
    content = [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "the memo"}},
        {
            "type": "document",
            "title": "report.pdf",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        },
    ]
    (message,) = to_openai(body(messages=[{"role": "user", "content": content}]))["messages"]
    assert message["content"] == [
        {"type": "text", "text": "the memo"},
        {
            "type": "file",
            "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
        },
    ]


def test_tool_use_and_tool_results_over_turns() -> None:
    messages = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "two cities", "signature": "sig"},
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "t2", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "rain"},
                {
                    "type": "tool_result",
                    "tool_use_id": "t2",
                    "content": [{"type": "text", "text": "no such city"}],
                    "is_error": True,
                },
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ]
    out = to_openai(body(messages=messages, tools=[WEATHER]))
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Looking.",  # the thinking block is Anthropic's to read, and dropped
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "t2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "rain"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: no such city"},
        {"role": "user", "content": "and tomorrow?"},
    ]


def test_a_tool_results_images_follow_it_in_a_user_message() -> None:
    picture = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}}
    result = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [{"type": "text", "text": "shot"}, picture],
    }
    out = to_openai(body(messages=[{"role": "user", "content": [result]}]))
    assert out["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "shot"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}],
        },
    ]


def test_an_assistant_turn_of_only_thinking_is_dropped() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "xx"}]},
        {"role": "user", "content": "again"},
    ]
    assert [m["role"] for m in to_openai(body(messages=messages))["messages"]] == ["user", "user"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        (
            {"type": "tool", "name": "get_weather"},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    out = to_openai(body(tools=[WEATHER], tool_choice=choice))
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": WEATHER["input_schema"],
            },
        }
    ]
    assert {k: out[k] for k in ("tool_choice", "parallel_tool_calls") if k in out} == expected


def test_server_tools_and_an_empty_tool_list_are_left_out() -> None:
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    assert "tools" not in to_openai(body(tools=[search], tool_choice={"type": "auto"}))
    assert "tools" not in to_openai(body(tools=[]))
    custom = {**WEATHER, "type": "custom"}
    assert len(to_openai(body(tools=[custom, search]))["tools"]) == 1


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 4096}, "medium"),
        ({"type": "enabled", "budget_tokens": 31999}, "high"),
        ({"type": "disabled"}, "none"),
        ({"type": "adaptive", "display": "omitted"}, None),
        (None, None),
    ],
)
def test_thinking_becomes_a_reasoning_effort(thinking: Any, effort: str | None) -> None:
    assert reasoning_effort(thinking) == effort
    out = to_openai(body(**({"thinking": thinking} if thinking else {})))
    assert out.get("reasoning_effort") == effort


def test_output_config_effort_wins_and_its_format_is_a_json_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    out = to_openai(
        body(
            thinking={"type": "enabled", "budget_tokens": 1024},
            output_config={"effort": "max", "format": {"type": "json_schema", "schema": schema}},
        )
    )
    assert out["reasoning_effort"] == "high"
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_tokens": -1}, "max_tokens: Input should be greater than or equal to 0"),
        ({"messages": []}, "messages: List should have at least 1 item"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role: Input should be"),
        ({"messages": [{"role": "user"}]}, "messages.0.content: Field required"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0: 'text' is required",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]},
            "messages.0.content.0: 'source' must be an object",
        ),
        ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
        ({"stream": "true"}, "stream: Input should be a valid boolean"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice: 'name' is required"),
        ({"thinking": {"type": "enabled"}}, "thinking: 'budget_tokens' is required"),
        ({"tools": [{"description": "no name"}]}, "tools.0.name: Field required"),
        ({"system": [{"type": "image"}]}, "system.0.type: Input should be 'text'"),
    ],
)
def test_a_bad_request_names_its_field(change: dict[str, Any], message: str) -> None:
    request = {k: v for k, v in {**body(), **change}.items() if v is not None}
    with pytest.raises(InvalidRequest) as bad:
        validate(MessagesRequest, request)
    assert bad.value.message.startswith(message), bad.value.message
    assert bad.value.status == 400


def test_a_missing_max_tokens_is_a_missing_field() -> None:
    request = body()
    del request["max_tokens"]
    with pytest.raises(InvalidRequest, match=r"^max_tokens: Field required$"):
        validate(MessagesRequest, request)
    validate(CountTokensRequest, request)  # count_tokens takes no max_tokens


def test_unknown_fields_and_block_types_pass() -> None:
    validate(
        MessagesRequest,
        body(
            context_management={"edits": []},
            safeguards=[{"type": "x"}],
            messages=[{"role": "user", "content": [{"type": "search_result", "source": "s", "title": "t"}]}],
        ),
    )
