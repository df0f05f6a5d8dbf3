"""OpenAI chat requests → Anthropic's Messages API (``/v1/messages`` bodies), as pure functions.

Choices made here, and why:

- System and developer messages, wherever they stand, are joined into the top-level ``system``.
- Tool results become ``tool_result`` blocks in a user turn; consecutive turns of one role are
  merged (tool results and the user text after them form one user turn, results first).
- ``max_tokens`` is required by Anthropic: 4096 when the client gives none.
- Reasoning effort (the client's ``reasoning_effort``, else the route's) turns on extended
  thinking with a budget of 1024 / 4096 / 16384 tokens, raising ``max_tokens`` above the budget
  when needed. Anthropic refuses sampling overrides with thinking on, so ``temperature`` and
  ``top_k`` are then dropped (and ``top_p`` below 0.95). It also refuses a forced tool with
  thinking: a client asking for both gets a 422; a route's effort yields to the forced tool.
  The same holds for a model without extended thinking (Claude 3 but 3.7).
- A client that sends ``thinking_blocks`` back on an assistant message (as answers carry them:
  see ``anthropic_response``) gets them replayed, which Anthropic requires for tool use with
  thinking (a tool-use turn sent back without them continues with thinking off rather than
  failing).
- JSON mode is emulated (``json_answer``), as Anthropic has none: ``response_format``
  json_schema becomes one tool whose ``input_schema`` is the schema, forced by ``tool_choice``,
  and its input is returned as the message content (``anthropic_response``, ``anthropic_stream``);
  json_object the same with a schema that takes any object, and a system note asking for JSON. A
  schema whose root is not an object (Anthropic wants one) is wrapped as ``{"value": ...}`` and
  unwrapped in the answer. With the client's own tools as well, the answer tool joins them and
  ``tool_choice`` becomes ``any``: the model calls one of the client's tools or answers; a forced
  tool choice of the client's wins (that turn's answer is its tool call, no JSON is asked for).
  Anthropic refuses extended thinking with a forced tool, so an emulated JSON answer is given
  without thinking, whatever effort was asked for.
- No logprobs, penalties, ``n > 1`` or text completions: 422.
  ``seed`` is ignored (OpenAI only promises best effort for it too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from laneway.errors import InvalidRequest, UnsupportedParameter
from laneway.providers.base import Call
from laneway.providers.openai_format import (
    content_parts,
    effort_of,
    function_tools,
    image_url_of,
    max_tokens_of,
    messages_of,
    number_of,
    parse_data_url,
    refuse_common,
    stop_of,
    text_of,
    tool_calls_of,
    tool_choice_of,
)

FAMILY = "anthropic"
DEFAULT_MAX_TOKENS = 4096
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
ANSWER_TOOL = "json_answer"  # the answer tool's name when the schema names none
ANSWER_DESCRIPTION = "Give your final answer by calling this tool: its input is the answer."
JSON_NOTE = "Respond with a JSON object, given as the input of the {tool} tool."
_TOOL_NAME = re.compile(r"[^a-zA-Z0-9_-]")


def _image_block(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    url = image_url_of(part)
    inline = parse_data_url(url)
    if inline is not None:
        media_type, data = inline
        if media_type not in IMAGE_TYPES:
            raise UnsupportedParameter(
                f"{where}: Anthropic takes jpeg, png, gif or webp images", param="messages"
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(f"{where}: an image url must be http(s) or a data: URL", param="messages")


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    blocks = []
    for part in content_parts(content, where):
        kind = part["type"]
        if kind == "text":
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image_block(part, where))
        else:
            raise UnsupportedParameter(
                f"{where}: '{kind}' content is not supported by Anthropic", param="messages"
            )
    return blocks


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    thinking = message.get("thinking_blocks")
    if isinstance(thinking, list):
        blocks.extend(
            b for b in thinking if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking")
        )
    if text := text_of(message.get("content"), where):
        blocks.append({"type": "text", "text": text})
    for call_id, name, arguments in tool_calls_of(message, where):
        if not call_id:
            raise InvalidRequest(f"{where}: each tool call needs an id", param="messages")
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
    return blocks


def convert_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """OpenAI chat messages → (Anthropic ``system``, Anthropic ``messages``)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []

    def append(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        role, where = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            if text := text_of(message.get("content"), where):
                system.append(text)
        elif role == "user":
            blocks = _user_blocks(message.get("content"), where)
            if not blocks:
                raise InvalidRequest(f"{where}: a user message needs content", param="messages")
            append("user", blocks)
        elif role == "assistant":
            # An empty assistant turn (no text, no tool calls) is dropped: Anthropic refuses it.
            if blocks := _assistant_blocks(message, where):
                append("assistant", blocks)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(f"{where}: a tool message needs tool_call_id", param="messages")
            result = {
                "type": "tool_result",
                "tool_use_id": call_id,
                "content": text_of(message.get("content"), where),
            }
            append("user", [result])
        else:
            raise InvalidRequest(f"{where}: unknown role '{role}'", param="messages")
    if not out:
        raise InvalidRequest("messages must hold at least one user or assistant message", param="messages")
    return "\n\n".join(system), out


def _refuse(body: Mapping[str, Any]) -> None:
    refuse_common(body, FAMILY)
    for key in ("frequency_penalty", "presence_penalty"):
        if number_of(body, key):
            raise UnsupportedParameter(f"the anthropic family has no {key}", param=key)


def _tool_choice(choice: str | None, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is not False:
        return None
    if choice == "none":
        return {"type": "none"}
    if choice in (None, "auto"):
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    else:
        out = {"type": "tool", "name": choice}
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def _unsigned_tool_turn(messages: list[dict[str, Any]]) -> bool:
    """Whether the last assistant turn called tools without the thinking block that preceded them."""
    last = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), None)
    if not last or not any(b["type"] == "tool_use" for b in last):
        return False
    return last[0]["type"] not in ("thinking", "redacted_thinking")


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    """An emulated JSON mode: the tool, forced or offered, whose input is the answer.
    ``wrapped``: the client's schema is under ``value`` (its root was not an object)."""

    kind: str  # json_schema | json_object
    tool: str
    schema: dict[str, Any]
    description: str
    wrapped: bool = False

    def tool_spec(self) -> dict[str, Any]:
        return {"name": self.tool, "description": self.description, "input_schema": self.schema}


def json_answer(body: Mapping[str, Any]) -> JsonAnswer | None:
    """The JSON mode this request asks for, as Anthropic gets it (see the module's docstring);
    None when it asks for none, or when a tool call it forces is that turn's answer."""
    response_format = body.get("response_format")
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind in (None, "text") and isinstance(response_format, Mapping):
        return None
    if kind not in ("json_object", "json_schema"):
        raise InvalidRequest(
            "response_format.type must be text, json_object or json_schema", param="response_format"
        )
    choice = tool_choice_of(body)
    tools = function_tools(body)
    if tools and choice not in (None, "auto", "none"):
        return None
    taken = {f["name"] for f in tools} if choice != "none" else set()
    if kind == "json_object":
        return JsonAnswer(kind, _free_name(ANSWER_TOOL, taken), {"type": "object"}, ANSWER_DESCRIPTION)
    spec = response_format.get("json_schema")
    schema = spec.get("schema", {"type": "object"}) if isinstance(spec, Mapping) else None
    if not isinstance(spec, Mapping) or not isinstance(schema, dict):
        raise InvalidRequest("response_format.json_schema.schema must be an object", param="response_format")
    name = spec.get("name")
    name = _TOOL_NAME.sub("_", name)[:64] if isinstance(name, str) and name else ANSWER_TOOL
    about = spec.get("description")
    description = f"{ANSWER_DESCRIPTION} {about}" if isinstance(about, str) and about else ANSWER_DESCRIPTION
    wrapped = schema.get("type", "object") != "object"
    schema = _wrap(schema) if wrapped else {**schema, "type": "object"}
    return JsonAnswer(kind, _free_name(name, taken), schema, description, wrapped)


def _free_name(name: str, taken: set[str]) -> str:
    while name in taken:
        name = f"{name}_answer"[-64:]
    return name


def _wrap(schema: dict[str, Any]) -> dict[str, Any]:
    """A non-object schema as the ``value`` of an object one; its definitions stay at the root,
    where its ``$ref``s (``#/$defs/...``) point."""
    defs: dict[str, Any] = {k: schema[k] for k in ("$defs", "definitions") if k in schema}
    inner = {k: v for k, v in schema.items() if k not in defs}
    return {"type": "object", "properties": {"value": inner}, "required": ["value"], **defs}


def messages_request(call: Call, *, stream: bool) -> dict[str, Any]:
    """An OpenAI chat request → a ``/v1/messages`` body."""
    body = call.body
    _refuse(body)
    system, messages = convert_messages(messages_of(body))
    max_tokens = max_tokens_of(body) or DEFAULT_MAX_TOKENS
    out: dict[str, Any] = {"model": call.model, "max_tokens": max_tokens, "messages": messages}
    if stream:
        out["stream"] = True
    out.update(_sampling(body))
    answer = json_answer(body)
    if answer is not None:
        _answer_tool(out, body, answer)  # no thinking: Anthropic refuses it with a forced tool
        if answer.kind == "json_object":
            system = "\n\n".join(filter(None, [system, JSON_NOTE.format(tool=answer.tool)]))
    else:
        _tools(out, body, messages, call)
    if system:
        out["system"] = system
    return out


def _tools(out: dict[str, Any], body: Mapping[str, Any], messages: list[dict[str, Any]], call: Call) -> None:
    """The client's tools and tool choice, and thinking when it can be on with them."""
    tools = function_tools(body)
    choice = tool_choice_of(body)
    if tools:
        out["tools"] = [_tool(f) for f in tools]
        if (tool_choice := _tool_choice(choice, body.get("parallel_tool_calls"))) is not None:
            out["tool_choice"] = tool_choice
    forced = bool(tools) and choice not in (None, "auto", "none")
    effort = _thinking_effort(call, forced=forced, messages=messages)
    if effort is not None:
        _think(out, THINKING_BUDGETS[effort])


def _answer_tool(out: dict[str, Any], body: Mapping[str, Any], answer: JsonAnswer) -> None:
    """The answer tool, forced; or, beside the client's own tools, one of them all must be used."""
    tools = [] if tool_choice_of(body) == "none" else [_tool(f) for f in function_tools(body)]
    out["tools"] = [*tools, answer.tool_spec()]
    if tools:
        out["tool_choice"] = {"type": "any"}
        if body.get("parallel_tool_calls") is False:
            out["tool_choice"]["disable_parallel_tool_use"] = True
    else:
        out["tool_choice"] = {"type": "tool", "name": answer.tool, "disable_parallel_tool_use": True}


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling parameters, stop sequences and user id, in Anthropic's names."""
    out: dict[str, Any] = {}
    for key in ("temperature", "top_p", "top_k"):
        value = number_of(body, key)
        if value is not None:
            out[key] = value
    if stop := stop_of(body):
        out["stop_sequences"] = stop
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    return out


def _tool(function: Mapping[str, Any]) -> dict[str, Any]:
    description = function.get("description")
    return {
        "name": function["name"],
        **({"description": description} if isinstance(description, str) else {}),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }


def _thinking_effort(call: Call, *, forced: bool, messages: list[dict[str, Any]]) -> str | None:
    """The effort to think with, if thinking can be on. A client that asked for it explicitly
    learns (422) why it cannot be; a route's effort quietly yields."""
    effort = effort_of(call.body, call.effort)
    if effort is None:
        return None
    explicit = call.body.get("reasoning_effort") not in (None, "none")
    if not can_think(call.model):
        if explicit:
            raise UnsupportedParameter(f"{call.model} has no extended thinking", param="reasoning_effort")
        return None  # a route's effort only applies to models that can think
    if forced:
        if explicit:
            raise UnsupportedParameter(
                "Anthropic cannot force a tool call while thinking; drop reasoning_effort or tool_choice",
                param="tool_choice",
            )
        return None  # the route's effort yields to the client's explicit tool choice
    if _unsigned_tool_turn(messages):
        # With thinking on, Anthropic wants the assistant's tool-use turn to begin with its
        # signed thinking block; a client that did not send it back continues without thinking.
        return None
    return effort


def _think(out: dict[str, Any], budget: int) -> None:
    """Turn extended thinking on in a request body: the budget fits under ``max_tokens``, and the
    sampling overrides Anthropic refuses alongside thinking are dropped."""
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if out["max_tokens"] <= budget:
        out["max_tokens"] += budget
    out.pop("temperature", None)
    out.pop("top_k", None)
    if out.get("top_p", 1) < 0.95:
        out.pop("top_p")


def can_think(model: str) -> bool:
    """Extended thinking: every Claude model but the Claude 3 generation (3.7 excepted)."""
    return not model.startswith("claude-3-") or model.startswith("claude-3-7")
