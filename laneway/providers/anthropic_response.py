"""Anthropic's answers → the OpenAI format, as pure functions: a ``/v1/messages`` answer, an
error (in a body or a stream's ``error`` event), the usage an answer reports, a ``/v1/models`` page.

Choices made here, and why:

- Thinking comes back as ``reasoning_content`` (text) plus ``thinking_blocks`` (the blocks with
  their signatures), which a client sends back for Anthropic to see them again (see
  ``anthropic_request``).
- An emulated JSON mode (``anthropic_request.json_answer``): the answer tool's input is the
  message's ``content``, as a JSON string, with ``finish_reason`` "stop" (or "length"); text
  around it is left out. Calls of the client's own tools stay tool calls ("tool_calls").
- Usage (``usage_of``, and a stream's in ``anthropic_stream``): prompt tokens are input + cache
  creation + cache read tokens (OpenAI's prompt count includes cached ones).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from laneway.errors import UpstreamStatusError
from laneway.operations import Operation
from laneway.providers.anthropic_request import JsonAnswer, can_think
from laneway.providers.base import ModelInfo, Usage
from laneway.providers.openai_format import (
    assistant_message,
    chat_completion,
    int_field,
    protocol_guard,
    str_field,
    tool_call,
    usage,
)

CONTEXT_LENGTH = 200_000  # every Claude model's window, when /v1/models does not say

# Anthropic error types (in an error body or a stream's ``error`` event) → HTTP status.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def status_error(error: Any, backend: str) -> UpstreamStatusError:
    """An Anthropic ``{"type": "error", "error": {"type", "message"}}`` as a status error."""
    kind = error.get("type") if isinstance(error, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    return UpstreamStatusError(
        f"backend '{backend}' reported {kind or 'an error'}: {message or error}",
        backend=backend,
        upstream_status=ERROR_STATUS.get(str(kind), 500),
    )


def prompt_counts(data: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt tokens, cached prompt tokens). OpenAI's prompt count includes cached tokens."""
    cached = int_field(data, "cache_read_input_tokens")
    return int_field(data, "input_tokens") + int_field(data, "cache_creation_input_tokens") + cached, cached


PROMPT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def usage_of(data: Mapping[str, Any]) -> Usage | None:
    """The tokens a ``/v1/messages`` answer reports (its ``usage``); None if it reports none.
    A count the answer leaves out stays None rather than becoming 0."""
    reported = data.get("usage")
    if not isinstance(reported, Mapping):
        return None
    prompt = _prompt_tokens(reported)
    completion = _reported(reported, "output_tokens")
    return None if prompt is None and completion is None else Usage(prompt, completion)


def _prompt_tokens(data: Mapping[str, Any]) -> int | None:
    counts = [c for key in PROMPT_KEYS if (c := _reported(data, key)) is not None]
    return sum(counts) if counts else None


def _reported(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def finish_reason(stop_reason: Any, *, answered: bool = False, called: bool = False) -> str:
    """Anthropic's stop reason in OpenAI's words. ``answered``: the emulated JSON answer came as
    the answer tool's input, so a ``tool_use`` stop is a plain "stop" unless other tools were
    ``called`` too."""
    if answered and stop_reason == "tool_use" and not called:
        return "stop"
    return FINISH_REASONS.get(str(stop_reason), "stop")


def answer_json(answer: JsonAnswer, tool_input: Any) -> str:
    """The answer tool's input as the message content: a JSON text of the client's schema."""
    value = tool_input if isinstance(tool_input, dict) else {}
    return orjson.dumps(value.get("value") if answer.wrapped else value).decode()


def message_response(
    data: Mapping[str, Any], *, model: str, backend: str = "", answer: JsonAnswer | None = None
) -> dict[str, Any]:
    """A ``/v1/messages`` answer → an OpenAI ``chat.completion`` (the id is Anthropic's).
    ``answer``: the request's emulated JSON mode, if it had one."""
    if data.get("type") == "error":
        raise status_error(data.get("error"), backend)
    with protocol_guard(backend, "message"):
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        reasoning: list[str] = []
        thinking_blocks: list[dict[str, Any]] = []
        answered: str | None = None
        for block in data["content"]:
            kind = block["type"]
            if kind == "text":
                texts.append(str_field(block, "text"))
            elif kind == "tool_use" and answer is not None and block.get("name") == answer.tool:
                answered = answer_json(answer, block.get("input"))
            elif kind == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                calls.append(tool_call(str_field(block, "id"), str_field(block, "name"), arguments))
            elif kind == "thinking":
                reasoning.append(str_field(block, "thinking"))
                thinking_blocks.append(
                    {
                        "type": "thinking",
                        "thinking": block["thinking"],
                        "signature": block.get("signature", ""),
                    }
                )
            elif kind == "redacted_thinking":
                thinking_blocks.append({"type": "redacted_thinking", "data": block["data"]})
            # server-tool blocks (web search...) have no OpenAI counterpart and are left out
        content = "".join(texts) if answered is None else answered
        message = assistant_message(content, calls, reasoning="".join(reasoning) or None)
        if thinking_blocks:
            message["thinking_blocks"] = thinking_blocks
        prompt, cached = prompt_counts(data["usage"])
        stop = data.get("stop_reason")
        return chat_completion(
            id=str_field(data, "id"),
            model=data.get("model") or model,
            message=message,
            finish_reason=finish_reason(stop, answered=answered is not None, called=bool(calls)),
            usage=usage(prompt, int_field(data["usage"], "output_tokens"), cached_tokens=cached),
        )


# --- discovery ----------------------------------------------------------------------------------


def _supported(capabilities: Mapping[str, Any], name: str) -> bool | None:
    """``capabilities[name].supported`` when the answer has it, else None (not said)."""
    entry = capabilities.get(name)
    value = entry.get("supported") if isinstance(entry, Mapping) else None
    return value if isinstance(value, bool) else None


def model_info(entry: Mapping[str, Any]) -> ModelInfo | None:
    """One ``/v1/models`` entry. Every Claude model chats and takes tools. ``max_input_tokens``
    is its context window and ``capabilities`` (``image_input``, ``thinking``) what it accepts;
    an older answer without them falls back to what every Claude model of its generation does."""
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id:
        return None
    caps = {Operation.CHAT.value, "tools"}
    listed = entry.get("capabilities")
    said = listed if isinstance(listed, Mapping) else {}
    if _supported(said, "image_input") is not False:
        caps.add("vision")
    thinks = _supported(said, "thinking")
    if thinks or (thinks is None and can_think(model_id)):
        caps.add("reasoning")
    context = entry.get("max_input_tokens")
    if not isinstance(context, int) or isinstance(context, bool) or context <= 0:
        context = CONTEXT_LENGTH
    types = frozenset({Operation.CHAT.value})  # no text completion, no embeddings
    return ModelInfo(id=model_id, types=types, capabilities=frozenset(caps), context_length=context)


def model_page(data: Mapping[str, Any], backend: str = "") -> tuple[list[ModelInfo], str | None]:
    """One page of ``/v1/models``: its models and the ``after_id`` of the next page (None at the end)."""
    with protocol_guard(backend, "/v1/models answer"):
        entries = data["data"]
        if not isinstance(entries, list):
            raise TypeError("'data' is not a list")
        models = [info for e in entries if isinstance(e, Mapping) and (info := model_info(e)) is not None]
        last = data.get("last_id")
        more = data.get("has_more") is True and isinstance(last, str) and bool(last)
        return models, last if more else None
