"""The Anthropic Messages API: /v1/messages (plain and streamed), count_tokens and /v1/models.

Streams are named SSE events (``event: NAME`` + ``data: {"type": NAME, ...}``) in the order the
API sends them: message_start, then per content block start / ping / deltas / stop, then
message_delta (stop reason and output tokens) and message_stop.

Two checks a test can see a native pass-through by, as Anthropic's API makes them: a thinking
block sent back in the history must carry the signature the sim gave it (else 400 "Invalid
`signature` in `thinking` block"), and the prompt up to the last ``cache_control`` breakpoint
is reported as written to the cache (``cache_creation_input_tokens``; the sim keeps no cache,
so every marked prefix is a write, whatever its length).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from laneway.sim.text import Answer, Prompt, ToolSpec, count_words
from laneway.sim.wire import (
    SLOT,
    Call,
    Generate,
    Meta,
    StreamPlan,
    WireError,
    as_dict,
    optional_bool,
    optional_int,
    require_model,
    rfc3339,
    slot_template,
    string_list,
)

SSE = b"text/event-stream; charset=utf-8"
STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "stop_sequence": "stop_sequence",
    "tool_calls": "tool_use",
}
_SIGNATURE = "c2ltLXNpZ25hdHVyZQ=="
_MODEL_CREATED = 1_740_000_000.0

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str, *, request_id: str | None = None) -> bytes:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return orjson.dumps(body)


def models_body(models: list[str], context_length: int) -> bytes:
    """``GET /v1/models``, newest shape: ``max_input_tokens`` is the context window and
    ``capabilities`` says what each model supports (every key always present)."""
    data = [
        {
            "type": "model",
            "id": name,
            "display_name": _display_name(name),
            "created_at": rfc3339(_MODEL_CREATED),
            "lifecycle": "active",
            "deprecated_at": None,
            "retires_at": None,
            "line": next((line for line in _LINES if line in name), None),
            "max_input_tokens": context_length,
            "max_tokens": min(context_length, 64_000),
            "capabilities": _capabilities(name),
        }
        for name in models
    ]
    first = data[0]["id"] if data else None
    last = data[-1]["id"] if data else None
    return orjson.dumps({"data": data, "has_more": False, "first_id": first, "last_id": last})


_LINES = ("haiku", "sonnet", "opus")
_VERSION_DASH = re.compile(r"(?<=\d)-(?=\d(?!\d))")  # "4-6" -> "4.6", but not before a date


def _display_name(name: str) -> str:
    """``claude-sonnet-4-6`` -> ``Claude Sonnet 4.6``."""
    return _VERSION_DASH.sub(".", name).replace("-", " ").title()


def _supported(value: bool) -> dict[str, bool]:
    return {"supported": value}


def _capabilities(name: str) -> dict[str, Any]:
    """A model's capability matrix. Thinking: every Claude model but the 3 generation (3.7 can)."""
    thinks = not name.startswith("claude-3-") or name.startswith("claude-3-7")
    yes = _supported(True)
    return {
        "batch": yes,
        "citations": yes,
        "code_execution": _supported(thinks),
        "context_management": {"supported": thinks, "clear_tool_uses_20250919": _supported(thinks)},
        "effort": {
            "supported": thinks,
            **{level: _supported(thinks) for level in ("low", "medium", "high", "max")},
        },
        "image_input": yes,
        "pdf_input": yes,
        "server_tools": {"supported": True, "code_execution": yes, "web_search": yes},
        "structured_outputs": _supported(thinks),
        "thinking": {
            "supported": thinks,
            "types": {
                "adaptive": _supported(thinks),
                "between_tools": _supported(False),
                "disabled": yes,
                "enabled": _supported(thinks),
            },
        },
    }


# -- parsing -----------------------------------------------------------------------------------


def _blocks_text(content: Any, prompt: Prompt) -> str:
    """Text of a content value (string or blocks); counts images, including inside tool results."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            raise WireError(400, "messages: content blocks must be objects")
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "image":
            source = block.get("source")
            if not isinstance(source, dict) or source.get("type") not in ("base64", "url", "file"):
                raise WireError(400, "messages: image blocks need a source")
            prompt.images += 1
        elif kind == "tool_result":
            texts.append(_blocks_text(block.get("content"), prompt))
    return " ".join(texts)


def _tool_result(content: Any, prompt: Prompt) -> str | None:
    if not isinstance(content, list):
        return None
    results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    if not results:
        return None
    scratch = Prompt()  # images were counted already
    return " ".join(_blocks_text(b.get("content"), scratch) for b in results)


def _tools(body: dict[str, Any]) -> list[ToolSpec]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise WireError(400, "tools: expected an array")
    specs: list[ToolSpec] = []
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise WireError(400, "tools: each tool needs a name")
        schema = tool.get("input_schema")
        if isinstance(schema, dict):  # server tools (web search...) carry no schema: not ours to call
            specs.append(ToolSpec(tool["name"], schema))
    return specs


def _tool_choice(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind == "none":
        return "none"
    if kind == "any":  # forces some tool: what OpenAI calls "required"
        return "required"
    if kind == "tool" and isinstance(value.get("name"), str):
        return str(value["name"])
    return None


@dataclass(slots=True)
class MessagesCall(Call):
    """A /v1/messages call: ``cache_words`` of its prompt are up to its last cache breakpoint."""

    cache_words: int = 0


def _cache_words(body: dict[str, Any]) -> int:
    """Words of the system prompt and messages up to (and with) the last block that carries
    ``cache_control``, in the order Anthropic caches them (tools, system, messages)."""
    scratch = Prompt()
    seen = cached = 0
    system = body.get("system")
    blocks: list[Any] = list(system) if isinstance(system, list) else []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        blocks.extend(content if isinstance(content, list) else [{"type": "text", "text": content or ""}])
    for block in blocks:
        seen += count_words(_blocks_text([block], scratch))
        if isinstance(block, dict) and isinstance(block.get("cache_control"), dict):
            cached = seen
    return cached


def _check_signatures(messages: list[Any]) -> None:
    """Anthropic refuses a thinking block whose signature it did not write."""
    for i, message in enumerate(messages):
        content = message.get("content") if message.get("role") == "assistant" else None
        for j, block in enumerate(content if isinstance(content, list) else []):
            if (
                isinstance(block, dict)
                and block.get("type") == "thinking"
                and block.get("signature") != _SIGNATURE
            ):
                raise WireError(400, f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block")


def _prompt(body: dict[str, Any]) -> Prompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireError(400, "messages: Field required")
    prompt = Prompt()
    system = body.get("system")
    prompt.words += count_words(_blocks_text(system, prompt))
    for message in messages:
        # "system" mid-conversation: Claude Code's per-turn-control beta sends them.
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system"):
            raise WireError(400, "messages: each message needs role 'user', 'assistant' or 'system'")
        text = _blocks_text(message.get("content"), prompt)
        prompt.words += count_words(text)
        if message["role"] == "user":
            prompt.last_user_text = text
    _check_signatures(messages)
    last = next((m for m in reversed(messages) if m["role"] != "system"), messages[-1])
    if last["role"] == "user":
        prompt.tool_result = _tool_result(last.get("content"), prompt)
    prompt.tools = _tools(body)
    prompt.tool_choice = _tool_choice(body.get("tool_choice"))
    prompt.stops = string_list(body.get("stop_sequences"), "stop_sequences")
    thinking = body.get("thinking")
    prompt.thinking = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    return prompt


MAX_OUTPUT_TOKENS = 64_000  # the Claude 4.5 models' most output tokens
MAX_OPUS_OUTPUT_TOKENS = 128_000  # Opus since 4.6


def _max_output(model: str) -> int:
    return MAX_OPUS_OUTPUT_TOKENS if "opus" in model else MAX_OUTPUT_TOKENS


def parse_messages(raw: Any) -> Call:
    body = as_dict(raw)
    model = require_model(body)
    if body.get("max_tokens") is None:
        raise WireError(400, "max_tokens: Field required")
    prompt = _prompt(body)
    # 0: the API only writes the prompt cache and generates nothing.
    prompt.max_tokens = optional_int(body, "max_tokens", minimum=0)
    most = _max_output(model)
    if prompt.max_tokens is not None and prompt.max_tokens > most:
        raise WireError(
            400,
            f"max_tokens: {prompt.max_tokens} > {most}, which is the maximum allowed "
            f"number of output tokens for {model}",
        )
    stream = optional_bool(body, "stream", "{name}: Input should be a valid boolean")
    return MessagesCall(model, "chat", stream is True, prompt, cache_words=_cache_words(body))


def parse_count_tokens(raw: Any) -> Call:
    body = as_dict(raw)
    return Call(require_model(body), "chat", False, _prompt(body))


def count_tokens_body(call: Call) -> bytes:
    return orjson.dumps({"input_tokens": call.prompt.prompt_tokens})


# -- rendering ---------------------------------------------------------------------------------


def _cached(call: Call) -> int:
    return call.cache_words if isinstance(call, MessagesCall) else 0


def _tool_id(meta: Meta) -> str:
    return f"toolu_sim{meta.seq:015x}"


def _usage(input_tokens: int, output_tokens: int, cached: int = 0) -> dict[str, Any]:
    cached = min(cached, input_tokens)
    return {
        "input_tokens": input_tokens - cached,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cached,
        "cache_read_input_tokens": 0,
        "service_tier": "standard",
    }


def _message(call: Call, answer: Answer, meta: Meta, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": f"msg_sim{meta.seq:017x}",
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(answer.prompt_tokens, answer.completion_tokens, _cached(call)),
    }


def render_messages(call: Call, answer: Answer, meta: Meta) -> bytes:
    content: list[dict[str, Any]] = []
    if answer.thinking:
        content.append({"type": "thinking", "thinking": answer.thinking_text, "signature": _SIGNATURE})
    if answer.tool_call is not None:
        tool = answer.tool_call
        content.append({"type": "tool_use", "id": _tool_id(meta), "name": tool.name, "input": tool.arguments})
    else:
        content.append({"type": "text", "text": answer.text})
    message = _message(call, answer, meta, content)
    message["stop_reason"] = STOP_REASON[answer.finish]
    message["stop_sequence"] = answer.stop_sequence
    return orjson.dumps(message)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def _delta_frames(index: int, kind: str, field: str, pieces: list[str]) -> list[bytes]:
    before, after = slot_template(
        {"type": "content_block_delta", "index": index, "delta": {"type": kind, field: SLOT}}
    )
    prefix = b"event: content_block_delta\ndata: " + before
    return [prefix + orjson.dumps(piece) + after + b"\n\n" for piece in pieces]


def render_messages_stream(call: Call, answer: Answer, meta: Meta) -> StreamPlan:
    """Blocks: [thinking], then text or tool_use. ``head`` opens the first block, ``tail``
    closes the last; frames in between (deltas, block boundaries) are paced as content."""
    start = _message(call, answer, meta, [])
    start["usage"] = _usage(answer.prompt_tokens, 1, _cached(call))
    blocks: list[tuple[dict[str, Any], list[bytes]]] = []
    if answer.thinking:
        thinking = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = _delta_frames(0, "thinking_delta", "thinking", answer.thinking)
        deltas.append(
            _event(
                "content_block_delta",
                {"index": 0, "delta": {"type": "signature_delta", "signature": _SIGNATURE}},
            )
        )
        blocks.append((thinking, deltas))
    index = len(blocks)
    if answer.tool_call is not None:
        tool = {"type": "tool_use", "id": _tool_id(meta), "name": answer.tool_call.name, "input": {}}
        blocks.append(
            (
                tool,
                _delta_frames(index, "input_json_delta", "partial_json", answer.tool_call.argument_pieces()),
            )
        )
    else:
        blocks.append(
            ({"type": "text", "text": ""}, _delta_frames(index, "text_delta", "text", answer.tokens))
        )

    head = _event("message_start", {"message": start})
    body: list[bytes] = []
    for i, (block, deltas) in enumerate(blocks):
        opening = _event("content_block_start", {"index": i, "content_block": block})
        if i == 0:
            head += opening + _event("ping", {})
        else:
            body[-1] += _event("content_block_stop", {"index": i - 1}) + opening
        body.extend(deltas)
    tail = _event("content_block_stop", {"index": len(blocks) - 1})
    delta = {"stop_reason": STOP_REASON[answer.finish], "stop_sequence": answer.stop_sequence}
    tail += _event("message_delta", {"delta": delta, "usage": {"output_tokens": answer.completion_tokens}})
    tail += _event("message_stop", {})
    return StreamPlan(SSE, head, body, tail)


MESSAGES = Generate(parse_messages, render_messages, render_messages_stream)
