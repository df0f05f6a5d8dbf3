"""Ollama request bodies → OpenAI request bodies (laneway.dialects.ollama.request), pure."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from laneway.dialects.ollama.request import (
    chat_request,
    embed_request,
    embeddings_request,
    generate_request,
    image_url,
    is_load,
)
from laneway.errors import InvalidRequest, UnsupportedParameter
from laneway.operations import Operation

HI = [{"role": "user", "content": "hi"}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def chat(**body: Any) -> dict[str, Any]:
    return chat_request({"model": "m", "messages": HI, "stream": False, **body}).body


def test_a_chat_streams_unless_told_not_to() -> None:
    streamed = chat_request({"model": "m", "messages": HI})
    assert streamed.op is Operation.CHAT
    assert streamed.stream is True
    assert streamed.body["stream"] is True
    assert streamed.body["stream_options"] == {"include_usage": True}  # the done line's counts
    whole = chat_request({"model": "m", "messages": HI, "stream": False})
    assert whole.stream is False
    assert "stream" not in whole.body
    assert whole.body == {"model": "m", "messages": HI}


def test_the_model_may_come_as_name_and_must_come() -> None:
    assert chat_request({"name": "old", "messages": HI}).body["model"] == "old"
    with pytest.raises(InvalidRequest, match="model is required"):
        chat_request({"messages": HI})
    with pytest.raises(InvalidRequest, match="model is required"):
        chat_request({"model": "", "messages": HI})


def test_images_become_data_urls_with_their_media_type() -> None:
    body = chat(
        messages=[{"role": "user", "content": "what?", "images": [PNG, "/9j/4AAQ", "R0lGODlh", "UklGRh"]}]
    )
    (message,) = body["messages"]
    assert message["content"][0] == {"type": "text", "text": "what?"}
    urls = [part["image_url"]["url"] for part in message["content"][1:]]
    assert urls == [
        f"data:image/png;base64,{PNG}",
        "data:image/jpeg;base64,/9j/4AAQ",
        "data:image/gif;base64,R0lGODlh",
        "data:image/webp;base64,UklGRh",
    ]
    assert image_url("AAAA", "x")["image_url"]["url"] == "data:image/png;base64,AAAA"


def test_images_must_be_base64_strings_on_user_messages() -> None:
    with pytest.raises(InvalidRequest, match="base64"):
        chat(messages=[{"role": "user", "content": "x", "images": [3]}])
    with pytest.raises(InvalidRequest, match="list"):
        chat(messages=[{"role": "user", "content": "x", "images": PNG}])
    with pytest.raises(UnsupportedParameter, match="only user messages"):
        chat(messages=[{"role": "assistant", "content": "x", "images": [PNG]}])


def test_tool_calls_get_ids_and_tool_results_find_their_call() -> None:
    messages = [
        {"role": "user", "content": "weather and time?"},
        {
            "role": "assistant",
            "content": "",
            "thinking": "two tools",
            "tool_calls": [
                {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "clock", "arguments": {}}},
            ],
        },
        {"role": "tool", "tool_name": "clock", "content": "noon"},
        {"role": "tool", "tool_name": "weather", "content": "sunny"},
    ]
    out = chat(messages=messages)["messages"]
    assistant = out[1]
    assert assistant["content"] is None
    assert assistant["reasoning_content"] == "two tools"
    assert assistant["tool_calls"] == [
        {
            "id": "call_1_0",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
        },
        {"id": "call_1_1", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
    ]
    assert out[2] == {"role": "tool", "tool_call_id": "call_1_1", "content": "noon"}
    assert out[3] == {"role": "tool", "tool_call_id": "call_1_0", "content": "sunny"}


def test_tool_results_without_a_name_take_the_next_open_call_and_ids_given_are_kept() -> None:
    messages = [
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "abc", "function": {"name": "f", "arguments": '{"x": 1}'}},
                {"function": {"name": "f"}},
            ],
        },
        {"role": "tool", "content": "first"},
        {"role": "tool", "tool_call_id": "call_0_1", "content": "second"},
        {"role": "tool", "content": "orphan"},
    ]
    out = chat(messages=messages)["messages"]
    assert out[0]["tool_calls"][0]["id"] == "abc"
    assert out[0]["tool_calls"][0]["function"]["arguments"] == '{"x": 1}'
    assert out[0]["tool_calls"][1]["function"]["arguments"] == "{}"
    assert [m["tool_call_id"] for m in out[1:]] == ["abc", "call_0_1", "call_3_unmatched"]


def test_bad_tool_calls_and_roles_are_400s() -> None:
    with pytest.raises(InvalidRequest, match=r"function\.name"):
        chat(messages=[{"role": "assistant", "tool_calls": [{"function": {}}]}])
    with pytest.raises(InvalidRequest, match="must be an object"):
        chat(
            messages=[{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]
        )
    with pytest.raises(InvalidRequest, match="role must be"):
        chat(messages=[{"role": "robot", "content": "beep"}])
    with pytest.raises(InvalidRequest, match="'content' must be a string"):
        chat(messages=[{"role": "user", "content": ["a"]}])
    with pytest.raises(InvalidRequest, match=r"messages\[0\] must be an object"):
        chat(messages=["hi"])


def test_tools_pass_as_function_tools() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert chat(tools=[tool])["tools"] == [tool]
    assert chat(tools=[{"function": {"name": "g"}}])["tools"] == [
        {"type": "function", "function": {"name": "g"}}
    ]
    assert "tools" not in chat(tools=[])
    with pytest.raises(InvalidRequest, match=r"function\.name"):
        chat(tools=[{"type": "function"}])
    with pytest.raises(UnsupportedParameter, match="only function tools"):
        chat(tools=[{"type": "web_search", "function": {"name": "x"}}])


def test_format_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert chat(format="json")["response_format"] == {"type": "json_object"}
    assert chat(format=schema)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert "response_format" not in chat(format="")
    with pytest.raises(InvalidRequest, match="'format'"):
        chat(format="yaml")


def test_options_that_mean_something_carry_over_and_runner_tuning_is_ignored() -> None:
    options = {
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "num_predict": 128,
        "stop": ["\n\n", "END"],
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "num_ctx": 8192,
        "repeat_penalty": 1.1,
        "mirostat": 2,
        "num_gpu": 1,
        "some_future_option": True,
    }
    body = chat(options=options, keep_alive="5m")
    assert body == {
        "model": "m",
        "temperature": 0.5,
        "top_p": 0.9,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "top_k": 40,
        "seed": 7,
        "max_tokens": 128,
        "stop": ["\n\n", "END"],
        "messages": HI,
    }
    assert chat(options={"stop": "END"})["stop"] == ["END"]
    for unlimited in (-1, -2, 0):
        assert "max_tokens" not in chat(options={"num_predict": unlimited})


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ("hot", "'options' must be an object"),
        ({"temperature": "hot"}, "'options.temperature' must be a number"),
        ({"temperature": True}, "'options.temperature' must be a number"),
        ({"seed": 1.5}, "'options.seed' must be an integer"),
        ({"num_predict": "lots"}, "'options.num_predict' must be an integer"),
        ({"stop": [1]}, "'options.stop' must be a list of strings"),
    ],
)
def test_bad_options_are_400s_that_name_the_option(options: Any, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        chat(options=options)


def test_think_becomes_reasoning_effort() -> None:
    assert chat(think=True)["reasoning_effort"] == "medium"
    assert chat(think=False)["reasoning_effort"] == "none"
    for effort in ("low", "medium", "high"):
        assert chat(think=effort)["reasoning_effort"] == effort
    assert "reasoning_effort" not in chat()
    with pytest.raises(InvalidRequest, match="'think'"):
        chat(think="max")


def test_logprobs_are_refused_and_stream_must_be_a_boolean() -> None:
    with pytest.raises(UnsupportedParameter, match="logprobs"):
        chat(logprobs=True)
    with pytest.raises(InvalidRequest, match="'stream' must be true or false"):
        chat_request({"model": "m", "messages": HI, "stream": "yes"})


def test_generate_is_a_chat_turn_with_its_system_and_images() -> None:
    out = generate_request(
        {"model": "m", "prompt": "why?", "system": "brief", "images": [PNG], "think": "high"}
    )
    assert out.op is Operation.CHAT
    assert out.stream is True
    assert out.body["messages"] == [
        {"role": "system", "content": "brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "why?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
    ]
    assert out.body["reasoning_effort"] == "high"
    plain = generate_request({"model": "m", "prompt": "why?", "stream": False, "format": "json"})
    assert plain.body == {
        "model": "m",
        "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "why?"}],
    }


def test_raw_and_suffix_generates_are_completions() -> None:
    raw = generate_request(
        {"model": "m", "prompt": "Once", "raw": True, "stream": False, "options": {"seed": 1}}
    )
    assert raw.op is Operation.COMPLETION
    assert raw.body == {"model": "m", "seed": 1, "prompt": "Once"}
    fim = generate_request({"model": "m", "prompt": "def f(", "suffix": "    return x"})
    assert fim.op is Operation.COMPLETION
    assert fim.body["suffix"] == "    return x"
    assert fim.body["stream"] is True
    with pytest.raises(UnsupportedParameter, match="images"):
        generate_request({"model": "m", "prompt": "x", "raw": True, "images": [PNG]})
    with pytest.raises(UnsupportedParameter, match="chat template"):
        generate_request({"model": "m", "prompt": "x", "raw": True, "format": "json"})
    with pytest.raises(UnsupportedParameter, match="chat template"):
        generate_request({"model": "m", "prompt": "x", "raw": True, "think": True})
    assert (
        generate_request({"model": "m", "prompt": "x", "raw": True, "think": False}).op
        is Operation.COMPLETION
    )


def test_generate_refuses_templates_and_token_contexts() -> None:
    with pytest.raises(UnsupportedParameter, match="templates"):
        generate_request({"model": "m", "prompt": "x", "template": "{{ .Prompt }}"})
    with pytest.raises(UnsupportedParameter, match="token context"):
        generate_request({"model": "m", "prompt": "x", "context": [1, 2]})
    assert generate_request({"model": "m", "prompt": "x", "context": [], "template": ""}).op is Operation.CHAT
    with pytest.raises(InvalidRequest, match="'prompt' must be a string"):
        generate_request({"model": "m", "prompt": 3})


def test_load_requests() -> None:
    assert is_load("chat", {"model": "m"})
    assert is_load("chat", {"model": "m", "messages": []})
    assert not is_load("chat", {"model": "m", "messages": HI})
    assert is_load("generate", {"model": "m", "prompt": ""})
    assert not is_load("generate", {"model": "m", "prompt": "", "images": [PNG]})
    assert not is_load("generate", {"model": "m", "suffix": "x"})
    assert is_load("embeddings", {"model": "m"})
    assert not is_load("embed", {"model": "m"})


def test_embed_and_embeddings() -> None:
    one = embed_request({"model": "e", "input": "text", "truncate": True, "keep_alive": 0})
    assert one.op is Operation.EMBEDDING
    assert one.stream is False
    assert one.body == {"model": "e", "input": "text", "encoding_format": "float"}
    many = embed_request({"model": "e", "input": ["a", "b"], "dimensions": 8})
    assert many.body == {"model": "e", "input": ["a", "b"], "encoding_format": "float", "dimensions": 8}
    legacy = embeddings_request({"model": "e", "prompt": "text"})
    assert legacy.body == one.body
    for bad in ([], [1], None, 3):
        with pytest.raises(InvalidRequest, match="'input'"):
            embed_request({"model": "e", "input": bad})
    with pytest.raises(InvalidRequest, match="dimensions"):
        embed_request({"model": "e", "input": "a", "dimensions": 0})


def test_the_translation_is_json() -> None:
    body = chat(
        messages=[{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": [1]}}}]}]
    )
    assert orjson.loads(orjson.dumps(body)) == body
