"""OpenAI answers → Ollama answers (laneway.dialects.ollama.response), the Ollama error shape
(``errors``) and the model descriptions (``models``), pure."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from laneway.dialects.ollama.errors import OLLAMA, error_line
from laneway.dialects.ollama.models import capabilities, details, running, show, tag
from laneway.dialects.ollama.response import (
    Timing,
    chat_response,
    embed_response,
    embeddings_response,
    generate_response,
    load_response,
    rfc3339_nano,
)
from laneway.errors import ModelNotFound
from laneway.inventory.lanes import Lane

TIMING = {"total_duration": 10, "load_duration": 0, "prompt_eval_duration": 4, "eval_duration": 6}
USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


def completion(message: dict[str, Any], finish: str = "stop", usage: Any = USAGE) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}


def test_times_are_written_as_go_writes_rfc3339_nano() -> None:
    assert rfc3339_nano(0) == "1970-01-01T00:00:00Z"
    assert rfc3339_nano(1.5) == "1970-01-01T00:00:01.5Z"
    assert rfc3339_nano(1_700_000_000.123456789).startswith(
        "2023-11-14T22:13:20.1234567"
    )  # a float's precision
    assert rfc3339_nano(1_700_000_000.25) == "2023-11-14T22:13:20.25Z"


def test_durations_split_at_the_first_token() -> None:
    assert Timing(10.0).durations(12.0) == {
        "total_duration": 2_000_000_000,
        "load_duration": 0,
        "prompt_eval_duration": 0,
        "eval_duration": 2_000_000_000,
    }
    split = Timing(10.0, first_token=10.5).durations(12.0)
    assert (split["prompt_eval_duration"], split["eval_duration"]) == (500_000_000, 1_500_000_000)


def test_a_chat_answer_in_ollamas_order_and_words() -> None:
    answer = chat_response(
        completion({"role": "assistant", "content": "Hi", "reasoning_content": "hmm"}),
        model="smart",
        at="T",
        timing=TIMING,
    )
    assert answer == {
        "model": "smart",
        "created_at": "T",
        "message": {"role": "assistant", "content": "Hi", "thinking": "hmm"},
        "done_reason": "stop",
        "done": True,
        "total_duration": 10,
        "load_duration": 0,
        "prompt_eval_count": 5,
        "prompt_eval_duration": 4,
        "eval_count": 7,
        "eval_duration": 6,
    }
    assert list(answer) == list(answer)  # the order above is Ollama's
    cut = chat_response(completion({"content": "H"}, "length", usage=None), model="m", at="T", timing=TIMING)
    assert cut["done_reason"] == "length"
    assert "prompt_eval_count" not in cut
    assert "eval_count" not in cut
    assert chat_response(completion({"content": None}), model="m", at="T", timing=TIMING)["message"] == {
        "role": "assistant",
        "content": "",
    }


def test_tool_calls_come_back_with_object_arguments() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}},
        ],
    }
    answer = chat_response(completion(message, "tool_calls"), model="m", at="T", timing=TIMING)
    assert answer["done_reason"] == "stop"  # Ollama's word after a tool call too
    assert answer["message"]["tool_calls"] == [
        {"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}},
        {"id": "c2", "function": {"index": 1, "name": "g", "arguments": {}}},
    ]
    bad = {"tool_calls": [{"function": {"name": "f", "arguments": "[1, 2]"}}]}
    with pytest.raises(ValueError, match="not a JSON object"):
        chat_response(completion(bad), model="m", at="T", timing=TIMING)


def test_generate_answers_from_chat_and_from_text_completions() -> None:
    chat = generate_response(
        completion({"content": "Blue", "reasoning": "light"}), model="m", at="T", timing=TIMING
    )
    assert (chat["response"], chat["thinking"], chat["done"], chat["eval_count"]) == (
        "Blue",
        "light",
        True,
        7,
    )
    text = {"choices": [{"text": "upon", "finish_reason": "length"}], "usage": USAGE}
    raw = generate_response(text, model="m", at="T", timing=TIMING)
    assert (raw["response"], raw["done_reason"]) == ("upon", "length")
    assert "message" not in raw
    with pytest.raises(TypeError):
        generate_response({"choices": [{"text": None}]}, model="m", at="T", timing=TIMING)


def test_embeddings_in_input_order_float_or_base64() -> None:
    packed = base64.b64encode(struct.pack("<2f", 0.5, -0.25)).decode()
    answer = {
        "data": [{"index": 1, "embedding": packed}, {"index": 0, "embedding": [1.0, 2.0]}],
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    embedded = embed_response(answer, model="e", timing=TIMING)
    assert embedded == {
        "model": "e",
        "embeddings": [[1.0, 2.0], [0.5, -0.25]],
        "total_duration": 10,
        "load_duration": 0,
        "prompt_eval_count": 3,
    }
    assert embeddings_response(answer) == {"embedding": [1.0, 2.0]}
    assert embeddings_response({"data": []}) == {"embedding": []}
    with pytest.raises(TypeError):
        embed_response({"data": [{"embedding": ["x"]}]}, model="e", timing=TIMING)


def test_load_answers() -> None:
    assert load_response("chat", model="m", at="T") == {
        "model": "m",
        "created_at": "T",
        "message": {"role": "assistant", "content": ""},
        "done_reason": "load",
        "done": True,
    }
    assert load_response("generate", model="m", at="T")["response"] == ""
    assert load_response("embeddings", model="m", at="T") == {"embedding": []}
    for zero in (0, "0", "0s"):
        assert load_response("chat", model="m", at="T", keep_alive=zero)["done_reason"] == "unload"
    assert load_response("chat", model="m", at="T", keep_alive="5m")["done_reason"] == "load"


def test_errors_are_ollamas_one_field() -> None:
    body = ModelNotFound("model 'x' not found").to_openai()
    assert OLLAMA.error(404, body) == {"error": "model 'x' not found"}
    assert OLLAMA.error(500, {"error": "plain"}) == {"error": "plain"}
    assert error_line(ModelNotFound("gone"), {"error": {"message": "cut off"}}) == b'{"error":"cut off"}\n'


def lane(backend: str, family: str, model: str, type_: str, caps: set[str], **extra: Any) -> Lane:
    return Lane("local", family, backend, type_, model, capabilities=frozenset(caps | {type_}), **extra)


def test_models_are_described_from_their_lanes() -> None:
    llama = [
        lane("gpu-1", "ollama", "llama", "chat", {"tools", "vision"}, context_length=8192, observed_at=1.0),
        lane("gpu-2", "ollama", "llama", "completion", {"reasoning"}, context_length=4096, observed_at=2.0),
    ]
    assert capabilities(llama) == ["completion", "tools", "vision", "thinking"]
    assert details(llama)["format"] == "gguf"
    assert details(llama)["family"] == "ollama"
    mixed = [*llama, lane("oai", "openai", "llama", "chat", set())]
    assert details(mixed)["family"] == "laneway"
    assert details(mixed)["families"] == ["ollama", "openai"]
    assert details(mixed)["format"] == ""
    assert capabilities([lane("e", "ollama", "emb", "embedding", set())]) == ["embedding"]
    listed = tag("llama", llama, now=9.0)
    assert listed["modified_at"] == "1970-01-01T00:00:01Z"
    assert listed["size"] == 0
    assert listed["laneway"] == {
        "kind": "model",
        "backends": ["gpu-1", "gpu-2"],
        "types": ["chat", "completion"],
    }
    route = tag("fast", [], now=9.0, selectors=["gpu-1/llama"])
    assert route["laneway"]["selectors"] == ["gpu-1/llama"]
    assert route["modified_at"] == "1970-01-01T00:00:09Z"
    shown = show("llama", llama, now=9.0)
    assert shown["model_info"] == {
        "general.architecture": "ollama",
        "general.basename": "llama",
        "ollama.context_length": 8192,
    }
    assert (shown["template"], shown["parameters"]) == ("", "")
    ps = running("llama", [lane("gpu-1", "ollama", "llama", "chat", set(), expires_at=60.0, loaded=True)])
    assert ps["expires_at"] == "1970-01-01T00:01:00Z"
    assert "context_length" not in ps
