"""Request shapes of the OpenAI API, for validation at the edge.

The models check what a request must have and what its fields must look like; unknown fields
are allowed (OpenAI adds parameters often and an OpenAI-compatible upstream may know them).
The validated model is not forwarded: the parsed dict is, so nothing is re-serialised needlessly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from laneway.errors import InvalidRequest
from laneway.operations import Operation

_Open = ConfigDict(extra="allow")

# Strict types: what laneway validates is what it forwards (the raw body goes upstream as sent),
# so a value that only coerces to the right type ("stream": "true") is refused, never passed on
# for the upstream to read differently. Bounds: the largest values any model accepts today, so
# an absurd number never reaches an upstream that would act on it (a 2^31-dimension embedding).
Bool = Annotated[bool, Field(strict=True)]
Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]
MAX_OUTPUT_TOKENS = 1 << 20  # no model writes a million tokens in one answer
MAX_DIMENSIONS = 1 << 16
INT64 = 2**63 - 1
Tokens = Annotated[int, Field(strict=True, ge=1, le=MAX_OUTPUT_TOKENS)]
Penalty = Annotated[float, Field(strict=True, ge=-2, le=2)]


class Message(BaseModel):
    model_config = _Open
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = _Open
    include_usage: Bool | None = None


class _Common(BaseModel):
    model_config = _Open
    model: Annotated[str, Field(strict=True, min_length=1)]
    stream: Bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Tokens | None = None
    temperature: Annotated[float, Field(strict=True, ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    n: Annotated[int, Field(strict=True, ge=1, le=128)] | None = None
    stop: Str | list[Str] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: Annotated[int, Field(strict=True, ge=-INT64 - 1, le=INT64)] | None = None
    logit_bias: dict[str, Annotated[float, Field(strict=True, ge=-100, le=100)]] | None = None
    user: Str | None = None


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Tokens | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Str | dict[str, Any] | None = None
    parallel_tool_calls: Bool | None = None
    reasoning_effort: Str | None = None
    logprobs: Bool | None = None
    top_logprobs: Annotated[int, Field(strict=True, ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = None
    store: Bool | None = None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: Annotated[int, Field(strict=True, ge=1, le=20)] | None = None
    echo: Bool | None = None
    logprobs: Annotated[int, Field(strict=True, ge=0, le=5)] | None = None
    suffix: Str | None = None


class EmbeddingRequest(BaseModel):
    model_config = _Open
    model: Annotated[str, Field(strict=True, min_length=1)]
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(strict=True, ge=1, le=MAX_DIMENSIONS)] | None = None
    user: Str | None = None


# The request shape of each operation, checked at its OpenAI path (the operation map's).
SHAPES: dict[Operation, type[BaseModel]] = {
    Operation.CHAT: ChatRequest,
    Operation.COMPLETION: CompletionRequest,
    Operation.EMBEDDING: EmbeddingRequest,
}


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
        loc = [p for p in first["loc"] if not (isinstance(p, str) and (p[:1].isupper() or "[" in p))]
        param = ".".join(str(p) for p in loc)
        raise InvalidRequest(_openai_words(first, param), param=param) from None


_TYPES = {
    "bool_type": "a boolean",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else "null"


def _openai_words(error: Any, param: str) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "missing":
        return f"Missing required parameter: '{param}'"
    if kind in _TYPES:
        return f"Invalid type for '{param}': expected {_TYPES[kind]}, but got {_json_type(value)} instead."
    if kind in ("less_than_equal", "less_than"):
        at = ctx.get("le", ctx.get("lt"))
        return f"Invalid '{param}': value above maximum. Expected a value <= {at}, but got {value} instead."
    if kind in ("greater_than_equal", "greater_than"):
        at = ctx.get("ge", ctx.get("gt"))
        return f"Invalid '{param}': value below minimum. Expected a value >= {at}, but got {value} instead."
    return f"Invalid value for '{param}': {error['msg']}"
