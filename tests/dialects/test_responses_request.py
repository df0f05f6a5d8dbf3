"""A Responses request → the OpenAI chat body (``laneway.dialects.responses.request``), as pure
functions: input items, instructions, tools of every kind Codex sends, tool_choice, text.format,
reasoning, and the 400s that name what cannot be served."""

from __future__ import annotations

from typing import Any

import pytest

from laneway.dialects.responses.items import decode_reasoning, encode_reasoning
from laneway.dialects.responses.request import translate
from laneway.errors import InvalidRequest

WEATHER = {"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": True}


def chat(**body: Any) -> dict[str, Any]:
    return translate({"model": "m", **body}).body


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    assert chat(input="hi", instructions="Be brief.") == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    }


def test_message_items_keep_their_roles_and_parts() -> None:
    body = chat(
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "data:x", "detail": "low"},
                ],
            },
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "seen"}]},
        ]
    )
    assert body["messages"] == [
        {"role": "developer", "content": "rules"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:x", "detail": "low"}},
            ],
        },
        {"role": "assistant", "content": "seen"},
    ]


def test_calls_join_one_assistant_message_and_outputs_become_tool_messages() -> None:
    body = chat(
        input=[
            {"role": "user", "content": "go"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "on it"}]},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {
                "type": "function_call",
                "call_id": "c2",
                "name": "close_agent",
                "namespace": "multi",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "closed"}],
            },
        ]
    )
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": "on it",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "multi__close_agent", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "closed"},
    ]


def test_custom_and_local_shell_calls_round_trip_as_functions() -> None:
    body = chat(
        input=[
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** Begin Patch"},
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "ok"},
            {"type": "local_shell_call", "call_id": "c2", "action": {"type": "exec", "command": ["ls"]}},
            {"type": "local_shell_call_output", "call_id": "c2", "output": "a b"},
        ]
    )
    calls = [m["tool_calls"][0]["function"] for m in body["messages"] if m["role"] == "assistant"]
    assert calls == [
        {"name": "apply_patch", "arguments": '{"input":"*** Begin Patch"}'},
        {"name": "local_shell", "arguments": '{"command":["ls"]}'},
    ]


def test_reasoning_items_carry_their_text_and_laneways_own_thinking_blocks() -> None:
    blocks = [{"type": "thinking", "thinking": "hmm", "signature": "sig"}]
    body = chat(
        input=[
            {"role": "user", "content": "go"},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "hmm"}],
                "encrypted_content": encode_reasoning(blocks),
            },
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAA-openai-secret"},
        ]
    )
    [_, assistant] = body["messages"]  # the reasoning nothing followed carries nothing: dropped
    assert assistant["reasoning_content"] == "hmm"
    assert assistant["thinking_blocks"] == blocks
    assert assistant["tool_calls"][0]["id"] == "c1"
    assert decode_reasoning("gAAAA-openai-secret") == []


def test_tools_of_every_kind_codex_sends() -> None:
    translated = translate(
        {
            "model": "m",
            "input": "hi",
            "tools": [
                WEATHER,
                {
                    "type": "namespace",
                    "name": "multi",
                    "description": "agents",
                    "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}],
                },
                {
                    "type": "custom",
                    "name": "apply_patch",
                    "description": "Patch files.",
                    "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"},
                },
                {"type": "local_shell"},
                {"type": "web_search", "external_web_access": False},
            ],
            "tool_choice": "auto",
            "parallel_tool_calls": True,
        }
    )
    functions = {t["function"]["name"]: t["function"] for t in translated.body["tools"]}
    assert list(functions) == ["weather", "multi__spawn", "apply_patch", "local_shell"]
    assert functions["weather"] == {"name": "weather", "parameters": {"type": "object"}, "strict": True}
    assert "start: x" in functions["apply_patch"]["description"]
    assert functions["apply_patch"]["parameters"]["required"] == ["input"]
    assert functions["local_shell"]["parameters"]["required"] == ["command"]
    assert translated.tools.ignored == ["web_search"]
    assert translated.tools.tool("multi__spawn").namespace == "multi"
    assert translated.body["tool_choice"] == "auto"
    assert translated.body["parallel_tool_calls"] is True


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("required", "required"),
        ({"type": "function", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
        (
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "weather"}]},
            "required",
        ),
    ],
)
def test_tool_choice(choice: Any, expected: Any) -> None:
    body = chat(input="hi", tools=[WEATHER, {**WEATHER, "name": "other"}], tool_choice=choice)
    assert body["tool_choice"] == expected
    if choice == "required":
        assert len(body["tools"]) == 2
    elif choice["type"] == "allowed_tools":
        assert [t["function"]["name"] for t in body["tools"]] == ["weather"]


def test_parameters_that_map() -> None:
    schema = {"type": "object", "properties": {}}
    body = chat(
        input="hi",
        max_output_tokens=64,
        temperature=0.3,
        top_p=0.9,
        reasoning={"effort": "xhigh", "summary": "auto"},
        text={
            "format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True},
            "verbosity": "low",
        },
        user="u1",
        prompt_cache_key="k",
        store=True,
        metadata={"a": "b"},
        stream=True,
    )
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.3,
        "top_p": 0.9,
        "user": "u1",
        "prompt_cache_key": "k",
        "max_completion_tokens": 64,
        "reasoning_effort": "high",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": schema, "strict": True},
        },
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert chat(input="hi", text={"format": {"type": "json_object"}})["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in chat(input="hi", text={"format": {"type": "text"}})


def test_a_chained_turn_continues_the_stored_conversation_under_its_own_instructions() -> None:
    history = [{"role": "user", "content": "before"}, {"role": "assistant", "content": "answer"}]
    translated = translate({"model": "m", "instructions": "New rules.", "input": "next"}, history)
    assert [m["content"] for m in translated.body["messages"]] == ["New rules.", "before", "answer", "next"]
    assert translated.input == [{"role": "user", "content": "next"}]  # what the new row adds


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": [{"type": "file_search"}]}, "tools[0].type", "file_search"),
        (
            {"tools": [{"type": "namespace", "name": "n", "tools": [{"type": "code_interpreter"}]}]},
            "tools[0].tools[0].type",
            "code_interpreter",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools", "Duplicate tool name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "nope"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice", "web_search"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "item_reference"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
            "input_file",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
            "file_id",
        ),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", "call_id"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "role"),
        ({"background": True}, "background", "Background"),
        ({"conversation": "conv_1"}, "conversation", "conversation"),
        ({"input": None}, "input", "input"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", "schema"),
    ],
)
def test_what_cannot_be_served_is_a_400_naming_it(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        translate({"model": "m", "input": "hi", **body})
    assert refused.value.status == 400
    assert refused.value.param == param
    assert words in refused.value.message
