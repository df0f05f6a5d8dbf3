"""The OpenAI wire format: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Shapes follow the OpenAI API reference as the official ``openai`` SDK parses them; Ollama,
vLLM and llama.cpp serve the same paths in the same shapes.
"""

from __future__ import annotations

from typing import Any

import orjson

from laneway.sim.schema_fill import output_schema
from laneway.sim.text import Answer, Prompt, ToolSpec, count_words, embedding, embedding_base64
from laneway.sim.wire import (
    SLOT,
    Call,
    Capability,
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
    slot_template,
    string_list,
)

SSE = b"text/event-stream; charset=utf-8"
DONE = b"data: [DONE]\n\n"
FINISH = {"stop": "stop", "length": "length", "stop_sequence": "stop", "tool_calls": "tool_calls"}
FINGERPRINT = "fp_sim"

_ERROR_TYPES = {
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    429: "requests",
}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def models_body(models: list[str], created: int, owned_by: str) -> bytes:
    data = [{"id": m, "object": "model", "created": created, "owned_by": owned_by} for m in models]
    return orjson.dumps({"object": "list", "data": data})


# -- parsing -----------------------------------------------------------------------------------


def _content(content: Any) -> tuple[str, int]:
    """Text and image count of a message's ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0
    texts: list[str] = []
    images = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_image", "image"):
            images += 1
    return " ".join(texts), images


def _tools(body: dict[str, Any]) -> list[ToolSpec]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise WireError(400, "tools: expected an array", param="tools")
    specs: list[ToolSpec] = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise WireError(400, "tools: each tool needs function.name", param="tools")
        parameters = function.get("parameters")
        specs.append(ToolSpec(function["name"], parameters if isinstance(parameters, dict) else {}))
    return specs


def tool_choice(value: Any) -> str | None:
    """OpenAI (and Ollama) ``tool_choice``: "none" | "auto" | "required" | {function: {name}}."""
    if isinstance(value, str):
        return None if value == "auto" else value
    if isinstance(value, dict):
        function = value.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return str(function["name"])
    return None


def parse_chat(raw: Any) -> Call:
    body = as_dict(raw)
    model = require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireError(400, "messages: expected a non-empty array", param="messages")
    prompt = Prompt()
    text = ""
    for message in messages:
        if not isinstance(message, dict):
            raise WireError(400, "messages: each message must be an object", param="messages")
        text, images = _content(message.get("content"))
        prompt.words += count_words(text)
        prompt.images += images
        if message.get("role") == "user":
            prompt.last_user_text = text
    if messages[-1].get("role") in ("tool", "function"):
        prompt.tool_result = text
    prompt.tools = _tools(body)
    prompt.tool_choice = tool_choice(body.get("tool_choice"))
    prompt.max_tokens = optional_int(body, "max_completion_tokens") or optional_int(body, "max_tokens")
    prompt.stops = string_list(body.get("stop"), "stop")
    prompt.output_schema = _output_schema(body.get("response_format"))
    return _call(body, model, "chat", prompt)


def _output_schema(response_format: Any) -> dict[str, Any] | None:
    if not isinstance(response_format, dict):
        return None
    spec = response_format.get("json_schema")
    return output_schema(response_format.get("type"), spec.get("schema") if isinstance(spec, dict) else None)


def parse_completion(raw: Any) -> Call:
    body = as_dict(raw)
    model = require_model(body)
    value = body.get("prompt")
    if isinstance(value, list):
        value = " ".join(v for v in value if isinstance(v, str))
    if not isinstance(value, str):
        raise WireError(400, "prompt: expected a string or a list of strings", param="prompt")
    prompt = Prompt(words=count_words(value), last_user_text=value)
    prompt.max_tokens = optional_int(body, "max_tokens")
    prompt.stops = string_list(body.get("stop"), "stop")
    return _call(body, model, "completion", prompt)


# gpt-4o-mini's most completion tokens; OpenAI refuses more with a 400 (the sim's models are its).
MAX_COMPLETION_TOKENS = 16_384
_BAD_TYPE = "Invalid type for '{name}': expected a boolean, but got a {got} instead."


def _max_tokens(prompt: Prompt) -> None:
    asked = prompt.max_tokens
    if asked is not None and asked > MAX_COMPLETION_TOKENS:
        raise WireError(
            400,
            f"max_tokens is too large: {asked}. This model supports at most {MAX_COMPLETION_TOKENS} "
            f"completion tokens, whereas you provided {asked}.",
            param="max_tokens",
        )


def _call(body: dict[str, Any], model: str, capability: Capability, prompt: Prompt) -> Call:
    _max_tokens(prompt)
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128):
        raise WireError(400, f"Invalid 'n': expected an integer from 1 to 128, but got {n!r}.", param="n")
    stream = optional_bool(body, "stream", _BAD_TYPE) is True
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return Call(model, capability, stream, prompt, include_usage=include_usage)


def parse_embeddings(raw: Any) -> Call:
    body = as_dict(raw)
    model = require_model(body)
    inputs = embedding_inputs(body.get("input"), "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise WireError(400, "encoding_format: expected 'float' or 'base64'", param="encoding_format")
    words = sum(count_words(text) for text in inputs)
    return Call(
        model,
        "embedding",
        False,
        Prompt(words=words),
        inputs=inputs,
        base64=encoding == "base64",
        dimensions=optional_int(body, "dimensions"),
    )


# -- rendering ---------------------------------------------------------------------------------


def _usage(answer: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _call_id(meta: Meta) -> str:
    return f"call_sim{meta.seq:016x}"


def render_chat(call: Call, answer: Answer, meta: Meta) -> bytes:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.text,
        "refusal": None,
        "annotations": [],
    }
    if answer.tool_call is not None:
        function = {"name": answer.tool_call.name, "arguments": answer.tool_call.arguments_json}
        message["content"] = None
        message["tool_calls"] = [{"id": _call_id(meta), "type": "function", "function": function}]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH[answer.finish]}
    return orjson.dumps(
        {
            "id": f"chatcmpl-sim{meta.seq:020x}",
            "object": "chat.completion",
            "created": int(meta.now),
            "model": call.model,
            "choices": [choice],
            "usage": _usage(answer),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
    )


def render_chat_stream(call: Call, answer: Answer, meta: Meta) -> StreamPlan:
    base: dict[str, Any] = {
        "id": f"chatcmpl-sim{meta.seq:020x}",
        "object": "chat.completion.chunk",
        "created": int(meta.now),
        "model": call.model,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    if call.include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice]}

    tool = answer.tool_call
    if tool is None:
        head = _frame(chunk({"role": "assistant", "content": "", "refusal": None}))
        before, after = slot_template(chunk({"content": SLOT}))
        pieces = answer.tokens
    else:
        function = {"name": tool.name, "arguments": ""}
        start = {"index": 0, "id": _call_id(meta), "type": "function", "function": function}
        head = _frame(chunk({"role": "assistant", "content": None, "tool_calls": [start], "refusal": None}))
        before, after = slot_template(chunk({"tool_calls": [{"index": 0, "function": {"arguments": SLOT}}]}))
        pieces = tool.argument_pieces()
    body = [b"data: " + before + orjson.dumps(piece) + after + b"\n\n" for piece in pieces]
    tail = _frame(chunk({}, FINISH[answer.finish]))
    if call.include_usage:
        tail += _frame({**base, "choices": [], "usage": _usage(answer)})
    return StreamPlan(SSE, head, body, tail + DONE)


def render_completion(call: Call, answer: Answer, meta: Meta) -> bytes:
    choice = {"text": answer.text, "index": 0, "logprobs": None, "finish_reason": FINISH[answer.finish]}
    usage = _usage(answer)
    return orjson.dumps(
        {
            "id": f"cmpl-sim{meta.seq:020x}",
            "object": "text_completion",
            "created": int(meta.now),
            "model": call.model,
            "choices": [choice],
            "usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
            "system_fingerprint": FINGERPRINT,
        }
    )


def render_completion_stream(call: Call, answer: Answer, meta: Meta) -> StreamPlan:
    base: dict[str, Any] = {
        "id": f"cmpl-sim{meta.seq:020x}",
        "object": "text_completion",
        "created": int(meta.now),
        "model": call.model,
        "system_fingerprint": FINGERPRINT,
    }
    if call.include_usage:
        base["usage"] = None

    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

    before, after = slot_template(chunk(SLOT))
    body = [b"data: " + before + orjson.dumps(token) + after + b"\n\n" for token in answer.tokens]
    tail = _frame(chunk("", FINISH[answer.finish]))
    if call.include_usage:
        usage = _usage(answer)
        totals = {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        tail += _frame({**base, "choices": [], "usage": totals})
    return StreamPlan(SSE, b"", body, tail + DONE)


def render_embeddings(call: Call, meta: Meta) -> bytes:
    dim = call.dimensions or meta.embedding_dim  # at most embedding_dim: checked by the app
    data: list[dict[str, Any]] = []
    for index, text in enumerate(call.inputs):
        vector = embedding(text, dim)
        value: Any = embedding_base64(vector) if call.base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = call.prompt.prompt_tokens
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return orjson.dumps({"object": "list", "data": data, "model": call.model, "usage": usage})


def _frame(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


CHAT = Generate(parse_chat, render_chat, render_chat_stream)
COMPLETIONS = Generate(parse_completion, render_completion, render_completion_stream)
EMBEDDINGS = Embed(parse_embeddings, render_embeddings)
