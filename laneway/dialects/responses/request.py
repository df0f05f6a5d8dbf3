"""A Responses API request (``POST /v1/responses``) as the OpenAI chat request the router serves.

``ResponsesRequest`` is the shape checked at the edge (``api.wire.validate`` names the field of a
400 in OpenAI's words). ``translate`` makes the chat body:

- ``instructions`` → a leading system message (of this turn only: as OpenAI has it, a chained
  turn does not inherit the instructions of the one before);
- ``input`` → messages (``items``), after the stored conversation of ``previous_response_id``;
- tools and ``tool_choice`` → chat functions (``tools``); ``text.format`` → ``response_format``;
  ``reasoning.effort`` → ``reasoning_effort`` (``xhigh`` is asked as ``high``, the most any
  family here takes); ``max_output_tokens`` → ``max_completion_tokens``; ``temperature``,
  ``top_p``, ``parallel_tool_calls``, ``user``, ``safety_identifier`` and ``prompt_cache_key``
  as they are;
- a stream always asks for usage (``stream_options.include_usage``): the Responses API reports it.

Refused with a 400 (nothing here can serve them): ``background``, ``conversation``, ``prompt``
templates, ``top_logprobs``. Accepted and left alone: ``include`` (but
``reasoning.encrypted_content``, see ``items``), ``truncation``, ``max_tool_calls``,
``metadata`` (echoed back), ``stream_options``, ``service_tier`` and ``text.verbosity`` (a lane
of another model may refuse them: a route mixes models), and unknown fields (Codex's
``client_metadata``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from laneway.dialects.responses.items import input_messages
from laneway.dialects.responses.tools import Tools, translate_tool_choice, translate_tools
from laneway.errors import InvalidRequest

Bool = Annotated[bool, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]
Tokens = Annotated[int, Field(strict=True, ge=1, le=1 << 20)]
_Open = ConfigDict(extra="allow")
_PASSED_ON = ("temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier", "prompt_cache_key")
_EFFORT = {
    "none": "none",
    "minimal": "minimal",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
}


class Reasoning(BaseModel):
    model_config = _Open
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Str | None = None


class TextFormat(BaseModel):
    model_config = _Open
    type: Literal["text", "json_object", "json_schema"]
    name: Str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: Bool | None = None
    description: Str | None = None


class Text(BaseModel):
    model_config = _Open
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(BaseModel):
    model_config = _Open
    model: Annotated[str, Field(strict=True, min_length=1)]
    input: Str | list[dict[str, Any]] | None = None
    instructions: Str | None = None
    stream: Bool | None = None
    store: Bool | None = None
    previous_response_id: Annotated[str, Field(strict=True, min_length=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Str | dict[str, Any] | None = None
    parallel_tool_calls: Bool | None = None
    max_output_tokens: Tokens | None = None
    temperature: Annotated[float, Field(strict=True, ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    reasoning: Reasoning | None = None
    text: Text | None = None
    user: Str | None = None
    metadata: dict[str, Str] | None = None
    include: list[Str] | None = None
    background: Bool | None = None


@dataclass(slots=True)
class Translated:
    """The chat ``body`` to serve, this turn's ``input`` as chat messages (what a stored response
    keeps after its conversation), and the request's ``tools``."""

    body: dict[str, Any]
    input: list[dict[str, Any]]
    tools: Tools


def _refuse(body: dict[str, Any]) -> None:
    if body.get("background"):
        raise InvalidRequest("Background responses are not supported by laneway", param="background")
    for key in ("conversation", "prompt"):
        if body.get(key) is not None:
            raise InvalidRequest(f"'{key}' is not supported by laneway; send the input itself", param=key)
    if body.get("top_logprobs"):
        raise InvalidRequest("'top_logprobs' is not supported by laneway", param="top_logprobs")


def response_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` → chat ``response_format`` (None: plain text)."""
    form = text.get("format") if isinstance(text, dict) else None
    if not isinstance(form, dict) or form.get("type") in (None, "text"):
        return None
    if form["type"] == "json_object":
        return {"type": "json_object"}
    if not isinstance(form.get("schema"), dict):
        raise InvalidRequest("Missing required parameter: 'text.format.schema'.", param="text.format.schema")
    schema = {"name": form.get("name") or "response", "schema": form["schema"]}
    for key in ("strict", "description"):
        if form.get(key) is not None:
            schema[key] = form[key]
    return {"type": "json_schema", "json_schema": schema}


def translate(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> Translated:
    """``body`` (validated as ``ResponsesRequest``) as a chat body; ``history``: the chat
    messages of the stored conversation it continues."""
    _refuse(body)
    if body.get("input") is None and history is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    tools = translate_tools(body.get("tools"))
    choice = translate_tool_choice(body.get("tool_choice"), tools)
    turn = input_messages(body.get("input"), tools)
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    messages += [*(history or []), *turn]
    if not messages:
        raise InvalidRequest("The input holds no message to answer.", param="input")
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    if tools.functions:
        chat["tools"] = tools.functions
        if choice is not None:
            chat["tool_choice"] = choice
    for key in _PASSED_ON:
        if body.get(key) is not None and (key != "parallel_tool_calls" or tools.functions):
            chat[key] = body[key]
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = _EFFORT[reasoning["effort"]]
    if (form := response_format(body.get("text"))) is not None:
        chat["response_format"] = form
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return Translated(chat, turn, tools)
