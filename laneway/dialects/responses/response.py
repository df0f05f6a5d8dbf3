"""A chat completion as a Responses API ``response`` object.

The answer's message becomes output items, in the order a Responses model writes them: a
``reasoning`` item when the answer carried reasoning (its text as ``reasoning_text``; the
thinking blocks, signed, in ``encrypted_content`` when the client asked for
``reasoning.encrypted_content``: see ``items``), a ``message`` with one ``output_text`` part,
then one item per tool call (``tools.call_item``: ``function_call``, ``custom_tool_call`` or
``local_shell_call``, by the tool it calls). ``finish_reason: length`` makes the response
``incomplete`` (``max_output_tokens``), ``content_filter`` too. ``output_text`` is not sent:
the SDKs compute it from the items.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from laneway.dialects.responses.items import encode_reasoning
from laneway.dialects.responses.tools import Tools, call_item
from laneway.errors import UpstreamProtocolError

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    """An id in OpenAI's style: ``resp_...``, ``msg_...``, ``fc_...``, ``rs_...``."""
    return f"{prefix}_{os.urandom(16).hex()}"


@dataclass(slots=True)
class Turn:
    """One Responses request being answered: its ``id``, when it began, the request ``body``
    (echoed in the response, as OpenAI echoes it) and its ``tools``."""

    body: Mapping[str, Any]
    tools: Tools
    created_at: int
    id: str = field(default_factory=lambda: new_id("resp"))

    @property
    def encrypted_reasoning(self) -> bool:
        include = self.body.get("include")
        return isinstance(include, list) and "reasoning.encrypted_content" in include

    def response(self, status: str, model: str | None = None) -> dict[str, Any]:
        """The response object in ``status`` with no output yet."""
        body = self.body
        reasoning = _object(body.get("reasoning"))
        text = _object(body.get("text"))
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"),
            "model": model or body.get("model"),
            "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, **text},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": None,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    def reasoning_item(self, text: str, blocks: list[dict[str, Any]], item_id: str) -> dict[str, Any]:
        item: dict[str, Any] = {
            "type": "reasoning",
            "id": item_id,
            "summary": [],
            "content": [{"type": "reasoning_text", "text": text}] if text else [],
        }
        if self.encrypted_reasoning:
            item["encrypted_content"] = encode_reasoning(blocks) if blocks else None
        return item


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, parts: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": parts}


def usage(chat: Any) -> dict[str, Any] | None:
    """Chat ``usage`` → the Responses ``usage`` (None when the lane said nothing)."""
    if not isinstance(chat, Mapping):
        return None
    prompt = chat.get("prompt_tokens") or 0
    completion = chat.get("completion_tokens") or 0
    cached = (chat.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": chat.get("total_tokens") or prompt + completion,
    }


def finish(response: dict[str, Any], finish_reason: Any) -> dict[str, Any]:
    """Set the final status from the chat ``finish_reason``."""
    reason = _INCOMPLETE.get(str(finish_reason))
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    return response


def output_items(turn: Turn, message: Mapping[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    blocks = message.get("thinking_blocks")
    blocks = [b for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else []
    if (isinstance(reasoning, str) and reasoning) or blocks:
        items.append(
            turn.reasoning_item(reasoning if isinstance(reasoning, str) else "", blocks, new_id("rs"))
        )
    parts = []
    if isinstance(message.get("content"), str) and message["content"]:
        parts.append(text_part(message["content"]))
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        items.append(message_item(new_id("msg"), parts))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        tool = turn.tools.tool(str(function.get("name")))
        items.append(
            call_item(
                tool, str(call.get("id")), str(function.get("arguments") or ""), new_id("fc"), "completed"
            )
        )
    return items


def from_completion(
    turn: Turn, completion: Mapping[str, Any], now: float, backend: str = ""
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the response object, the answer as a chat assistant message, which a stored response
    keeps); ``now``: when it completed."""
    try:
        choice = completion["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise UpstreamProtocolError(
            f"backend '{backend}' answered without a message", backend=backend
        ) from None
    response = turn.response("completed", completion.get("model"))
    response["output"] = output_items(turn, message)
    response["usage"] = usage(completion.get("usage"))
    finish(response, choice.get("finish_reason"))
    response["completed_at"] = int(now) if response["status"] == "completed" else None
    return response, assistant_turn(message)


def assistant_turn(message: Mapping[str, Any]) -> dict[str, Any]:
    """The answer as the assistant message a next turn sends back (what a chain is built of)."""
    kept: dict[str, Any] = {"role": "assistant", "content": message.get("content") or None}
    for key in ("tool_calls", "reasoning_content", "thinking_blocks"):
        if message.get(key):
            kept[key] = message[key]
    return kept
