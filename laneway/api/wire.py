"""Request shapes of the OpenAI API, for validation at the edge.

The models check what a request must have and what its fields must look like; unknown fields
are allowed (OpenAI adds parameters often and an OpenAI-compatible upstream may know them).
The validated model is not forwarded: the parsed dict is, so nothing is re-serialised needlessly.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from laneway.errors import InvalidRequest

_Open = ConfigDict(extra="allow")


class Message(BaseModel):
    model_config = _Open
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = _Open
    include_usage: bool | None = None


class _Common(BaseModel):
    model_config = _Open
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(BaseModel):
    model_config = _Open
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object")
    return data


def validate(model: type[BaseModel], data: dict[str, Any]) -> None:
    """Raise a 400 that names the offending parameter, in the words OpenAI uses."""
    if "model" not in data:
        raise InvalidRequest("you must provide a model parameter", param="model")
    try:
        model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and p[:1].isupper()))
        if first["type"] == "missing":
            raise InvalidRequest(f"Missing required parameter: '{param}'", param=param) from None
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}", param=param) from None
