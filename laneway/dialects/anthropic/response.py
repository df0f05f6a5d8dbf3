"""An OpenAI chat completion → an Anthropic message, as pure functions (``to_message``).

Choices made here, and why:

- Blocks in Anthropic's order: thinking first, then text, then one ``tool_use`` per tool call.
  Thinking comes from the answer's ``thinking_blocks`` when it carries them (laneway's OpenAI
  answers from an Anthropic upstream do, with their signatures: ``providers.anthropic_response``),
  else from ``reasoning_content`` (or ``reasoning``) as one thinking block with an empty signature
  (there is nothing to sign it with; only Anthropic can check one).
- Stop reasons: stop → ``end_turn``, or ``stop_sequence`` when the answer says which stop string
  matched (vLLM's ``stop_reason``); length → ``max_tokens``; tool_calls → ``tool_use``;
  content_filter → ``refusal``.
- Usage: OpenAI's prompt count includes cached tokens; Anthropic's ``input_tokens`` does not, so
  cached tokens move to ``cache_read_input_tokens``.
- The id is the completion's, with ``msg_`` before it (Anthropic's SDKs show it as is).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from laneway.errors import UpstreamProtocolError

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def message_id(completion_id: Any) -> str:
    text = str(completion_id or "laneway")
    return text if text.startswith("msg_") else f"msg_{text}"


def stop_reason(finish_reason: Any, stop_sequences: list[str], matched: Any = None) -> tuple[str, str | None]:
    """(Anthropic's ``stop_reason``, ``stop_sequence``) for an OpenAI ``finish_reason``."""
    if finish_reason == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return STOP_REASONS.get(str(finish_reason), "end_turn"), None


def usage_of(usage: Any) -> dict[str, int]:
    """OpenAI's ``usage`` → Anthropic's (zeros when the answer has none)."""
    usage = usage if isinstance(usage, Mapping) else {}
    prompt = _count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    return {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": _count(usage.get("completion_tokens")),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def thinking_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The thinking of an OpenAI message (or delta) as Anthropic blocks."""
    carried = message.get("thinking_blocks")
    if isinstance(carried, list) and carried:
        return [
            dict(b)
            for b in carried
            if isinstance(b, Mapping) and b.get("type") in ("thinking", "redacted_thinking")
        ]
    text = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(text, str) and text:
        return [{"type": "thinking", "thinking": text, "signature": ""}]
    return []


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments (a JSON string) as ``tool_use.input``; ``{}`` when it is not an
    object (a model that wrote broken JSON: the client sees the call, without arguments)."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str | bytes) and arguments else {}
    except orjson.JSONDecodeError:
        value = {}
    return value if isinstance(value, dict) else {}


def _content(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks = thinking_blocks(message)
    text = message.get("content")
    if isinstance(text, list):  # some servers answer with parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, Mapping))
    if isinstance(text, str) and text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or ""),
                "name": str(function.get("name") or ""),
                "input": tool_input(function.get("arguments")),
            }
        )
    return blocks


def to_message(completion: Mapping[str, Any], *, model: str, stop_sequences: list[str]) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` → an Anthropic ``message``."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise UpstreamProtocolError("the lane's answer has no choices")
    choice = choices[0]
    said = choice.get("message")
    message: Mapping[str, Any] = said if isinstance(said, Mapping) else {}
    reason, sequence = stop_reason(choice.get("finish_reason"), stop_sequences, choice.get("stop_reason"))
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model") or model,
        "content": _content(message),
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_of(completion.get("usage")),
    }
