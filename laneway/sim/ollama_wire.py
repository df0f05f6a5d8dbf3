"""Ollama's native API: /api/chat, /api/generate, /api/embed(dings), /api/tags, /api/show, /api/ps.

Ollama streams by default (``stream`` absent means true) as NDJSON; errors are ``{"error": "..."}``;
durations are nanoseconds; tool-call arguments are JSON objects, not strings.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from laneway.sim.openai_wire import tool_choice
from laneway.sim.schema_fill import output_schema
from laneway.sim.text import Answer, Prompt, ToolSpec, count_words, embedding
from laneway.sim.wire import (
    SLOT,
    Call,
    Embed,
    Generate,
    Meta,
    StreamPlan,
    WireError,
    as_dict,
    embedding_inputs,
    optional_bool,
    optional_int,
    require_model,
    rfc3339,
    slot_template,
    string_list,
)

NDJSON = b"application/x-ndjson"
VERSION = "0.12.6"
DONE_REASON = {"stop": "stop", "length": "length", "stop_sequence": "stop", "tool_calls": "stop"}
_MODIFIED_AT = "2025-01-01T00:00:00Z"
_LETTERS = re.compile(r"[a-z]+")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([bm])$")


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"error": message})


# -- model metadata ----------------------------------------------------------------------------


def _architecture(base: str) -> str:
    if "embed" in base:
        return "bert"
    letters = _LETTERS.match(base)
    return letters.group() if letters else "llama"


def _details(name: str) -> dict[str, Any]:
    base, _, tag = name.partition(":")
    family = _architecture(base)
    size = _SIZE.search(tag.lower())
    default_size = "137M" if "embed" in base else "7B"
    parameter_size = size.group(1) + size.group(2).upper() if size else default_size
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size,
        "quantization_level": "F16" if "embed" in base else "Q4_K_M",
    }


def capabilities(name: str) -> list[str]:
    if "embed" in name:
        return ["embedding"]
    caps = ["completion", "tools"]
    if "vision" in name or "llava" in name:
        caps.append("vision")
    if "r1" in name or "qwen3" in name or "think" in name:
        caps.append("thinking")
    return caps


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _size(name: str) -> int:
    return 274_302_450 if "embed" in name else 2_019_393_189


def _entry(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": _MODIFIED_AT,
        "size": _size(name),
        "digest": _digest(name),
        "details": _details(name),
    }


def tags_body(models: list[str]) -> bytes:
    return orjson.dumps({"models": [_entry(name) for name in models]})


def ps_body(models: list[str], now: float, context_length: int) -> bytes:
    entries = [
        {
            **_entry(name),
            "expires_at": rfc3339(now + 300),
            "size_vram": _size(name),
            "context_length": context_length,
        }
        for name in models
    ]
    for entry in entries:
        del entry["modified_at"]
    return orjson.dumps({"models": entries})


def show_body(name: str, context_length: int, embedding_dim: int) -> bytes:
    details = _details(name)
    arch = details["family"]
    model_info = {
        "general.architecture": arch,
        "general.basename": name.partition(":")[0],
        "general.parameter_count": 3_212_749_888 if "embed" not in name else 136_727_040,
        f"{arch}.context_length": context_length,
        f"{arch}.embedding_length": embedding_dim if "embed" in name else 3072,
    }
    return orjson.dumps(
        {
            "license": "simulated",
            "modelfile": f"FROM {name}\n",
            "parameters": 'stop "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": details,
            "model_info": model_info,
            "capabilities": capabilities(name),
            "modified_at": _MODIFIED_AT,
        }
    )


def version_body() -> bytes:
    return orjson.dumps({"version": VERSION})


# -- parsing -----------------------------------------------------------------------------------


def _options(body: dict[str, Any], prompt: Prompt) -> None:
    options = body.get("options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise WireError(400, "options must be an object")
    predict = optional_int(options, "num_predict", minimum=-2)
    prompt.max_tokens = predict if predict is not None and predict >= 0 else None
    prompt.stops = string_list(options.get("stop"), "stop")


def _stream(body: dict[str, Any]) -> bool:
    # Go's JSON decoder: a string where a bool belongs fails the whole request.
    message = "json: cannot unmarshal {got} into Go struct field .{name} of type bool"
    return optional_bool(body, "stream", message) is not False


def _tools(body: dict[str, Any]) -> list[ToolSpec]:
    specs: list[ToolSpec] = []
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            specs.append(ToolSpec(function["name"], parameters if isinstance(parameters, dict) else {}))
    return specs


def parse_chat(raw: Any) -> Call:
    body = as_dict(raw)
    model = require_model(body)
    messages = body.get("messages")
    if messages is None:
        messages = []
    if not isinstance(messages, list):
        raise WireError(400, "messages must be an array")
    prompt = Prompt()
    content = ""
    for message in messages:
        if not isinstance(message, dict):
            raise WireError(400, "each message must be an object")
        value = message.get("content")
        content = value if isinstance(value, str) else ""
        prompt.words += count_words(content)
        images = message.get("images")
        prompt.images += len(images) if isinstance(images, list) else 0
        if message.get("role") == "user":
            prompt.last_user_text = content
    if messages and messages[-1].get("role") == "tool":
        prompt.tool_result = content
    prompt.tools = _tools(body)
    prompt.tool_choice = tool_choice(body.get("tool_choice"))
    prompt.thinking = body.get("think") not in (None, False)
    fmt = body.get("format")
    prompt.output_schema = output_schema("schema" if isinstance(fmt, dict) else fmt, fmt)
    _options(body, prompt)
    return Call(model, "chat", _stream(body), prompt)


def parse_generate(raw: Any) -> Call:
    body = as_dict(raw)
    model = require_model(body)
    text = body.get("prompt") or ""
    system = body.get("system") or ""
    if not isinstance(text, str) or not isinstance(system, str):
        raise WireError(400, "prompt and system must be strings")
    images = body.get("images")
    prompt = Prompt(words=count_words(system) + count_words(text), last_user_text=text)
    prompt.images = len(images) if isinstance(images, list) else 0
    _options(body, prompt)
    return Call(model, "completion", _stream(body), prompt)


def parse_embed(raw: Any) -> Call:
    body = as_dict(raw)
    model = require_model(body)
    inputs = embedding_inputs(body.get("input"), "input")
    words = sum(count_words(text) for text in inputs)
    return Call(
        model,
        "embedding",
        False,
        Prompt(words=words),
        inputs=inputs,
        dimensions=optional_int(body, "dimensions"),
    )


def parse_legacy_embeddings(raw: Any) -> Call:
    body = as_dict(raw)
    model = require_model(body)
    text = body.get("prompt")
    if not isinstance(text, str):
        raise WireError(400, "prompt must be a string")
    return Call(model, "embedding", False, Prompt(words=count_words(text)), inputs=[text])


# -- rendering ---------------------------------------------------------------------------------


def _durations(answer: Answer, meta: Meta) -> dict[str, int]:
    load = 1_000_000
    prompt_eval = max(int(meta.latency * 1e9), 1_000_000)
    per_token = 1 / meta.tokens_per_second if meta.tokens_per_second > 0 else 0.001
    evaluation = int(answer.completion_tokens * per_token * 1e9)
    return {
        "total_duration": load + prompt_eval + evaluation,
        "load_duration": load,
        "prompt_eval_count": answer.prompt_tokens,
        "prompt_eval_duration": prompt_eval,
        "eval_count": answer.completion_tokens,
        "eval_duration": evaluation,
    }


def _tool_calls(answer: Answer, meta: Meta) -> list[dict[str, Any]]:
    assert answer.tool_call is not None
    function = {"index": 0, "name": answer.tool_call.name, "arguments": answer.tool_call.arguments}
    return [{"id": f"call_sim{meta.seq:016x}", "function": function}]


def _message(answer: Answer, meta: Meta, content: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if answer.thinking:
        message["thinking"] = answer.thinking_text
    if answer.tool_call is not None:
        message["tool_calls"] = _tool_calls(answer, meta)
    return message


def render_chat(call: Call, answer: Answer, meta: Meta) -> bytes:
    return orjson.dumps(
        {
            "model": call.model,
            "created_at": rfc3339(meta.now, fraction=True),
            "message": _message(answer, meta, answer.text),
            "done_reason": DONE_REASON[answer.finish],
            "done": True,
            **_durations(answer, meta),
        }
    )


def render_chat_stream(call: Call, answer: Answer, meta: Meta) -> StreamPlan:
    created = rfc3339(meta.now, fraction=True)
    before, after = slot_template(
        {
            "model": call.model,
            "created_at": created,
            "message": {"role": "assistant", "content": SLOT},
            "done": False,
        }
    )
    body = [before + orjson.dumps(token) + after + b"\n" for token in answer.tokens]
    if answer.tool_call is not None:
        message = {"role": "assistant", "content": "", "tool_calls": _tool_calls(answer, meta)}
        body.append(
            orjson.dumps({"model": call.model, "created_at": created, "message": message, "done": False})
            + b"\n"
        )
    final = {
        "model": call.model,
        "created_at": created,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": DONE_REASON[answer.finish],
        **_durations(answer, meta),
    }
    return StreamPlan(NDJSON, b"", body, orjson.dumps(final) + b"\n")


def _context(answer: Answer) -> list[int]:
    return list(range(1, answer.prompt_tokens + answer.completion_tokens + 1))


def render_generate(call: Call, answer: Answer, meta: Meta) -> bytes:
    return orjson.dumps(
        {
            "model": call.model,
            "created_at": rfc3339(meta.now, fraction=True),
            "response": answer.text,
            "done": True,
            "done_reason": DONE_REASON[answer.finish],
            "context": _context(answer),
            **_durations(answer, meta),
        }
    )


def render_generate_stream(call: Call, answer: Answer, meta: Meta) -> StreamPlan:
    created = rfc3339(meta.now, fraction=True)
    before, after = slot_template(
        {"model": call.model, "created_at": created, "response": SLOT, "done": False}
    )
    body = [before + orjson.dumps(token) + after + b"\n" for token in answer.tokens]
    final = {
        "model": call.model,
        "created_at": created,
        "response": "",
        "done": True,
        "done_reason": DONE_REASON[answer.finish],
        "context": _context(answer),
        **_durations(answer, meta),
    }
    return StreamPlan(NDJSON, b"", body, orjson.dumps(final) + b"\n")


def render_embed(call: Call, meta: Meta) -> bytes:
    # Ollama shortens a vector to ``dimensions``; it never makes one longer than the model's.
    dim = min(call.dimensions or meta.embedding_dim, meta.embedding_dim)
    vectors = [embedding(text, dim) for text in call.inputs]
    return orjson.dumps(
        {
            "model": call.model,
            "embeddings": vectors,
            "total_duration": 2_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": call.prompt.prompt_tokens,
        }
    )


def render_legacy_embeddings(call: Call, meta: Meta) -> bytes:
    return orjson.dumps({"embedding": embedding(call.inputs[0], meta.embedding_dim)})


CHAT = Generate(parse_chat, render_chat, render_chat_stream)
GENERATE = Generate(parse_generate, render_generate, render_generate_stream)
EMBED = Embed(parse_embed, render_embed)
LEGACY_EMBEDDINGS = Embed(parse_legacy_embeddings, render_legacy_embeddings)
