"""An Anthropic Messages request → an OpenAI chat request, as pure functions (``to_openai``).

This is what every lane but an anthropic-family one serves (that one gets the client's body as
sent: ``providers.anthropic_native``). The body has passed ``shapes.validate`` first.

Choices made here, and why:

- ``system`` (a string or text blocks) becomes one leading system message; a ``system`` message
  within ``messages`` (Claude Code sends them mid-conversation) a system message in its place.
- A user turn's ``tool_result`` blocks become ``tool`` messages, in order, before the turn's other
  content (Anthropic puts results first; OpenAI wants each ``tool`` message right after the
  assistant's calls). A result that ``is_error`` says so in its content (OpenAI's tool message has
  no error flag); its images follow in a user message (a tool message holds text only).
- Images (base64 or url) become ``image_url`` parts (a data URL for base64); a PDF document a
  ``file`` part; a text document its text. Thinking blocks in the history are dropped: their
  signatures mean something only to Anthropic, whose lanes get the body natively. Block types
  with no OpenAI counterpart (server tool results, search results...) are dropped too: a lane
  that cannot see them should still answer the rest.
- ``tool_choice``: auto, any → ``required``, tool → the named function, none;
  ``disable_parallel_tool_use`` → ``parallel_tool_calls: false``. Server tools (a ``type`` other
  than ``custom``) have no schema a non-Anthropic lane could call and are dropped.
- ``thinking``: enabled → ``reasoning_effort`` by its budget (below 4096 low, below 16384 medium,
  else high: the budgets laneway's own Anthropic translation uses for each effort), disabled →
  ``none``, adaptive → the model's default (no effort). ``output_config.effort`` wins when given
  (xhigh and max are OpenAI's high).
- ``output_config.format`` (structured outputs: a JSON schema) → ``response_format``
  json_schema. ``max_tokens: 0`` (Anthropic: warm the cache, generate nothing) → 1: there is no
  cache to warm on another lane, and OpenAI refuses 0.
- ``metadata.user_id`` → ``user``; ``stop_sequences`` → ``stop``; a stream asks for usage
  (``stream_options.include_usage``): Anthropic's stream always reports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

FAMILY = "anthropic"
LOW_BELOW, MEDIUM_BELOW = 4096, 16384  # thinking budgets → reasoning effort
CLIENT_TOOL_TYPES = (None, "custom")


def to_openai(body: Mapping[str, Any]) -> dict[str, Any]:
    """A validated ``/v1/messages`` body → an OpenAI ``/v1/chat/completions`` body."""
    messages = _system(body.get("system"))
    for message in body["messages"]:
        if message["role"] == "user":
            messages.extend(_user_turn(message["content"]))
        elif message["role"] == "system":
            messages.extend(_system(message["content"]))
        elif (assistant := _assistant_turn(message["content"])) is not None:
            messages.append(assistant)
    out: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": max(1, body["max_tokens"]),
    }
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    out.update(_sampling(body))
    out.update(_tools(body))
    out.update(_output(body))
    return out


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    """Sampling parameters, stop sequences and the user id, in OpenAI's names."""
    out = {key: body[key] for key in ("temperature", "top_p", "top_k") if body.get(key) is not None}
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    return out


def _output(body: Mapping[str, Any]) -> dict[str, Any]:
    """``reasoning_effort`` and ``response_format`` from thinking and ``output_config``."""
    out: dict[str, Any] = {}
    said = body.get("output_config")
    config: Mapping[str, Any] = said if isinstance(said, Mapping) else {}
    if (effort := _effort(config.get("effort")) or reasoning_effort(body.get("thinking"))) is not None:
        out["reasoning_effort"] = effort
    if (response_format := _output_format(config.get("format") or body.get("output_format"))) is not None:
        out["response_format"] = response_format
    return out


def _effort(value: Any) -> str | None:
    if value in ("low", "medium", "high"):
        return str(value)
    return "high" if value in ("xhigh", "max") else None


def _system(system: Any) -> list[dict[str, Any]]:
    if isinstance(system, str):
        text = system
    elif isinstance(system, list):
        text = "\n\n".join(b["text"] for b in system if b.get("type") == "text" and b["text"])
    else:
        text = ""
    return [{"role": "system", "content": text}] if text else []


def reasoning_effort(thinking: Any) -> str | None:
    if not isinstance(thinking, Mapping):
        return None
    kind = thinking.get("type")
    if kind == "disabled":
        return "none"
    if kind != "enabled":
        return None  # adaptive: the model decides, as it does without an effort
    budget = thinking.get("budget_tokens") or 0
    return "low" if budget < LOW_BELOW else "medium" if budget < MEDIUM_BELOW else "high"


def _output_format(value: Any) -> dict[str, Any] | None:
    """Anthropic's structured outputs (``output_format: {"type": "json_schema", "schema"}``)."""
    if not isinstance(value, Mapping) or value.get("type") != "json_schema":
        return None
    schema = value.get("schema")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}


# --- content --------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """The text of a content value (a string, or blocks whose text blocks count)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(b["text"] for b in content if isinstance(b, Mapping) and b.get("type") == "text")


def _image_part(source: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = source.get("type")
    if kind == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif kind == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        return None  # a Files API id: only Anthropic can read it
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: Mapping[str, Any]) -> dict[str, Any] | None:
    source = block["source"]
    kind = source.get("type")
    if kind == "text":
        return {"type": "text", "text": str(source.get("data", ""))}
    if kind == "content":
        return {"type": "text", "text": _text_of(source.get("content"))}
    if kind == "base64":
        media_type = source.get("media_type", "application/pdf")
        title = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
        data_url = f"data:{media_type};base64,{source.get('data', '')}"
        return {"type": "file", "file": {"filename": title, "file_data": data_url}}
    return None


def _part(block: Mapping[str, Any]) -> dict[str, Any] | None:
    """One user content block as an OpenAI content part (None: it has no counterpart)."""
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": block["text"]} if block["text"] else None
    if kind == "image":
        return _image_part(block["source"])
    if kind == "document":
        return _document_part(block)
    return None


def _user_message(parts: list[dict[str, Any]]) -> dict[str, Any]:
    if all(p["type"] == "text" for p in parts):
        return {"role": "user", "content": "".join(p["text"] for p in parts)}
    return {"role": "user", "content": parts}


def _tool_message(block: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A tool_result block → (the tool message, the images it carried)."""
    content = block.get("content")
    text = _text_of(content)
    images: list[dict[str, Any]] = []
    if isinstance(content, list):
        images = [p for b in content if b.get("type") == "image" and (p := _part(b)) is not None]
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}, images


def _user_turn(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        if block["type"] == "tool_result":
            message, images = _tool_message(block)
            tools.append(message)
            parts.extend(images)
        elif (part := _part(block)) is not None:
            parts.append(part)
    return [*tools, _user_message(parts)] if parts else tools


def _assistant_turn(content: Any) -> dict[str, Any] | None:
    if isinstance(content, str):
        return {"role": "assistant", "content": content} if content else None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if block["type"] == "text":
            texts.append(block["text"])
        elif block["type"] == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
    text = "".join(texts)
    if not text and not calls:
        return None  # only thinking (or nothing): OpenAI refuses an empty assistant turn
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


# --- tools --------------------------------------------------------------------------------------


def _tools(body: Mapping[str, Any]) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` (and ``parallel_tool_calls``) in OpenAI's words."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                **({"description": tool["description"]} if isinstance(tool.get("description"), str) else {}),
                "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
            },
        }
        for tool in body.get("tools") or []
        if tool.get("type") in CLIENT_TOOL_TYPES
    ]
    if not tools:
        return {}
    out: dict[str, Any] = {"tools": tools}
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping):
        kind = choice["type"]
        if kind == "any":
            out["tool_choice"] = "required"
        elif kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            out["tool_choice"] = kind  # auto | none
        if choice.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False
    return out
