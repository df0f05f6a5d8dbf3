"""The request shapes of Anthropic's Messages API, checked at the edge (as ``api.wire`` checks
OpenAI's): what a request must have and what its fields must look like, in Anthropic's words
(``max_tokens: Field required``), as a 400 ``invalid_request_error`` naming the field.

Unknown fields are allowed everywhere: Anthropic adds parameters and block types often, and a
lane of the anthropic family gets the body as it was sent. Content blocks are checked only as far
as the translation to OpenAI reads them (their ``type``; a text block's ``text``, an image's
``source``, a tool_use's ``id`` and ``name``, a tool_result's ``tool_use_id``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from laneway.errors import InvalidRequest

_Open = ConfigDict(extra="allow")

Bool = Annotated[bool, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]
Name = Annotated[str, Field(strict=True, min_length=1)]
MAX_OUTPUT_TOKENS = 1 << 20  # as api.wire: no model writes a million tokens in one answer
# 0 is allowed: Anthropic then only writes the prompt cache and generates nothing.
Tokens = Annotated[int, Field(strict=True, ge=0, le=MAX_OUTPUT_TOKENS)]
Unit = Annotated[float, Field(strict=True, ge=0, le=1)]

# What each block type must carry for the translation to read it (other types: only ``type``).
_REQUIRED = {
    "text": ("text",),
    "image": ("source",),
    "document": ("source",),
    "tool_use": ("id", "name"),
    "tool_result": ("tool_use_id",),
    "thinking": ("thinking",),
    "redacted_thinking": ("data",),
}


class Block(BaseModel):
    model_config = _Open
    type: Name

    @model_validator(mode="after")
    def _fields(self) -> Block:
        extra = self.model_extra or {}
        for key in _REQUIRED.get(self.type, ()):
            if key not in extra:
                raise ValueError(f"'{key}' is required in a {self.type} block")
        if self.type == "text" and not isinstance(extra["text"], str):
            raise ValueError("'text' must be a string")
        if self.type in ("image", "document"):
            _check_source(extra["source"])
        return self


# What an image's or a document's source must carry, by its type (as Anthropic refuses otherwise).
_SOURCE_FIELDS = {"base64": ("media_type", "data"), "url": ("url",), "file": ("file_id",), "text": ("data",)}


def _check_source(source: object) -> None:
    if not isinstance(source, dict):
        raise ValueError("'source' must be an object")
    for key in _SOURCE_FIELDS.get(str(source.get("type")), ()):
        if not isinstance(source.get(key), str):
            raise ValueError(f"'source.{key}' is required (a string) in a {source.get('type')} source")


class TextBlock(BaseModel):
    model_config = _Open
    type: Literal["text"]
    text: Str


class Message(BaseModel):
    model_config = _Open
    # "system" in the middle of a conversation: what Claude Code sends with its per-turn-control
    # beta (its environment, the tools it deferred), with an ``output_config`` of its own.
    role: Literal["user", "assistant", "system"]
    content: Str | list[Block]


class Tool(BaseModel):
    model_config = _Open
    name: Name
    type: Str | None = None  # None or "custom": a client tool; else a server tool (web_search_...)
    description: Str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(BaseModel):
    model_config = _Open
    type: Literal["auto", "any", "tool", "none"]
    name: Name | None = None
    disable_parallel_tool_use: Bool | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if self.type == "tool" and self.name is None:
            raise ValueError("'name' is required when type is 'tool'")
        return self


class Thinking(BaseModel):
    model_config = _Open
    type: Name  # enabled, disabled, adaptive, between_tools (and whatever comes next)
    budget_tokens: Annotated[int, Field(strict=True, ge=1)] | None = None

    @model_validator(mode="after")
    def _budget(self) -> Thinking:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("'budget_tokens' is required when thinking is enabled")
        return self


class Metadata(BaseModel):
    model_config = _Open
    user_id: Str | None = None


class OutputConfig(BaseModel):
    model_config = _Open
    effort: Str | None = None  # low, medium, high, xhigh, max
    format: dict[str, Any] | None = None  # {"type": "json_schema", "schema": {...}}


class _Prompt(BaseModel):
    model_config = _Open
    model: Name
    messages: list[Message] = Field(min_length=1)
    system: Str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class MessagesRequest(_Prompt):
    max_tokens: Tokens
    stream: Bool | None = None
    stop_sequences: list[Str] | None = None
    temperature: Unit | None = None
    top_p: Unit | None = None
    top_k: Annotated[int, Field(strict=True, ge=0)] | None = None
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None


class CountTokensRequest(_Prompt):
    """``/v1/messages/count_tokens``: a request without ``max_tokens`` and sampling."""


def validate(shape: type[BaseModel], body: dict[str, Any]) -> None:
    """Raise a 400 naming the first offending field the way Anthropic does
    (``messages.0.role: Input should be 'user' or 'assistant'``)."""
    try:
        shape.model_validate(body)
    except ValidationError as exc:
        # A value of a union (content: a string or blocks) fails once per member; the deepest
        # error is the one about what was sent (a block of a list, not "a string was expected").
        errors = [
            ([str(p) for p in e["loc"] if not _is_union_tag(p)], e) for e in exc.errors(include_url=False)
        ]
        loc, first = max(errors, key=lambda pair: len(pair[0]))
        field = ".".join(loc)
        message = first["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"{field}: {message}" if field else message, param=field or None) from None


def _is_union_tag(part: Any) -> bool:
    # pydantic names the member of a union it tried ("list[Block]", "str"): not a field.
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part in ("str", "int", "bool"))
