"""The seam between the ASGI plumbing (``app.py``) and the three wire formats.

A wire module parses a request body into a family-neutral ``Call`` and renders an ``Answer``
back as bytes: a whole body, or a ``StreamPlan`` whose frames the app sends with the configured
pacing. Wire modules are pure functions; they never see the network, the clock or the options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from laneway.sim.text import Answer, Prompt

Capability = Literal["chat", "completion", "embedding"]
SLOT = "\x00sim-slot\x00"  # a value no request can contain: see slot_template


class WireError(Exception):
    """A request the family's server would refuse (malformed, missing a field): status + message."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass(slots=True)
class Call:
    """One parsed inference request."""

    model: str
    capability: Capability
    stream: bool
    prompt: Prompt
    include_usage: bool = False  # OpenAI stream_options.include_usage
    inputs: list[str] = field(default_factory=list)  # embeddings
    base64: bool = False  # OpenAI encoding_format
    dimensions: int | None = None  # embeddings


@dataclass(frozen=True, slots=True)
class Meta:
    """What a rendering needs besides the call and its answer."""

    seq: int  # request number, for ids
    now: float  # wall clock, seconds since the epoch
    embedding_dim: int
    tokens_per_second: float
    latency: float


@dataclass(slots=True)
class StreamPlan:
    """A stream, pre-rendered. ``body`` frames are the content chunks the app paces and may drop."""

    content_type: bytes
    head: bytes
    body: list[bytes]
    tail: bytes


@dataclass(frozen=True, slots=True)
class Generate:
    """An endpoint that generates text (chat, completions)."""

    parse: Callable[[Any], Call]
    render: Callable[[Call, Answer, Meta], bytes]
    render_stream: Callable[[Call, Answer, Meta], StreamPlan]


@dataclass(frozen=True, slots=True)
class Embed:
    """An endpoint that returns vectors."""

    parse: Callable[[Any], Call]
    render: Callable[[Call, Meta], bytes]


def slot_template(obj: Any) -> tuple[bytes, bytes]:
    """Serialize ``obj`` once with ``SLOT`` in place of one string value; return the bytes
    before and after it, so each stream frame is ``before + orjson.dumps(value) + after``."""
    before, after = orjson.dumps(obj).split(orjson.dumps(SLOT), 1)
    return before, after


def as_dict(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise WireError(400, "the request body must be a JSON object")
    return body


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError(400, "model: a model name is required", param="model")
    return model


def optional_bool(body: dict[str, Any], name: str, message: str) -> bool | None:
    """A boolean field; any other JSON type is refused with ``message`` (each family words it
    its own way), as the real servers do: none of them reads "true" as true."""
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise WireError(400, message.format(name=name, got=json_type(value)), param=name)


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def optional_int(body: dict[str, Any], name: str, *, minimum: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise WireError(400, f"{name}: expected an integer >= {minimum}", param=name)
    return value


def string_list(value: Any, name: str) -> list[str]:
    """A stop-like field: absent, one string, or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise WireError(400, f"{name}: expected a string or a list of strings", param=name)


def embedding_inputs(value: Any, name: str) -> list[str]:
    """``input``: a string, a list of strings, or token arrays (hashed as their JSON)."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value:
        items = value if not all(isinstance(v, int) for v in value) else [value]
    else:
        raise WireError(400, f"{name}: expected a string or a non-empty list", param=name)
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list):
            out.append(orjson.dumps(item).decode())
        else:
            raise WireError(400, f"{name}: expected strings or token arrays", param=name)
    return out


def rfc3339(epoch: float, *, fraction: bool = False) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    text = moment.isoformat(timespec="microseconds" if fraction else "seconds")
    return text.replace("+00:00", "Z")
