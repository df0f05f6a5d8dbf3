"""The OpenAI wire format, read and written by the adapters of families that speak something else.

Readers take an OpenAI request body apart and refuse, with laneway's own errors, what is malformed
(``InvalidRequest``, 400) or what a family cannot honour (``UnsupportedParameter``, 422). Builders
make the OpenAI response objects: ``chat.completion``, ``chat.completion.chunk`` (through a
``ChunkWriter`` that keeps a stream's id, model and tool-call indexes), ``text_completion`` and the
embeddings ``list``. ``protocol_guard`` is the boundary where a malformed upstream answer
(a missing key, a wrong type) becomes ``UpstreamProtocolError``.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

from laneway.errors import InvalidRequest, UnsupportedParameter, UpstreamProtocolError

EFFORTS = ("low", "medium", "high")

# --- reading requests ---------------------------------------------------------------------------


def messages_of(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``body["messages"]``: a non-empty list of objects that each have a string ``role``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a 'role'", param="messages")
    return messages


def content_parts(content: Any, where: str) -> list[dict[str, Any]]:
    """A message's ``content`` as a list of parts: a string is one text part, null is none."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(
        isinstance(p, dict) and isinstance(p.get("type"), str) for p in content
    ):
        for part in content:
            if part["type"] in ("text", "refusal") and not isinstance(part.get(part["type"]), str):
                raise InvalidRequest(f"{where}: a '{part['type']}' part needs a string", param="messages")
        return content
    raise InvalidRequest(f"{where}: 'content' must be a string or a list of typed parts", param="messages")


def text_of(content: Any, where: str) -> str:
    """The text of a content that may only hold text (system, tool and assistant messages)."""
    texts = []
    for part in content_parts(content, where):
        kind = part["type"]
        if kind not in ("text", "refusal"):
            raise UnsupportedParameter(f"{where}: '{kind}' parts are not allowed here", param="messages")
        texts.append(part[kind])
    return "".join(texts)


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:<media type>;base64,<data>`` → (media type, base64 data); None for any other URL."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not data:
        raise InvalidRequest("an image data URL must look like data:<type>;base64,<data>", param="messages")
    return media_type or "application/octet-stream", data


def image_url_of(part: Mapping[str, Any]) -> str:
    """The URL of an ``image_url`` part (``{"image_url": {"url": ...}}`` or the short string form)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str) or not url:
        raise InvalidRequest("an 'image_url' part needs a url", param="messages")
    return url


def tool_arguments(arguments: Any) -> dict[str, Any]:
    """An assistant tool call's ``function.arguments`` (a JSON string) as an object."""
    if isinstance(arguments, dict):
        return arguments
    if arguments in (None, ""):
        return {}
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str | bytes) else None
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", param="messages")
    return value


def tool_calls_of(message: Mapping[str, Any], where: str) -> list[tuple[str, str, dict[str, Any]]]:
    """An assistant message's ``tool_calls`` as (id, name, arguments) triples."""
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where}: 'tool_calls' must be a list", param="messages")
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"{where}: each tool call needs function.name", param="messages")
        out.append((str(call.get("id") or ""), function["name"], tool_arguments(function.get("arguments"))))
    return out


def function_tools(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``body["tools"]`` as their ``function`` objects (name, description, parameters)."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list", param="tools")
    out = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise UnsupportedParameter(f"only function tools are supported, not '{kind}'", param="tools")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("each tool needs function.name", param="tools")
        out.append(function)
    return out


def tool_choice_of(body: Mapping[str, Any]) -> str | None:
    """``tool_choice`` as ``"auto"``, ``"none"``, ``"required"``, a function name, or None."""
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return str(choice)
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return str(function["name"])
    raise InvalidRequest(
        "'tool_choice' must be auto, none, required or a named function", param="tool_choice"
    )


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    """``max_completion_tokens`` (the current name) or ``max_tokens`` (the legacy one)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"'{key}' must be a positive integer", param=key)
        return value
    return None


def stop_of(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise InvalidRequest("'stop' must be a string or a list of strings", param="stop")


def number_of(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be a number", param=key)
    return value


def effort_of(body: Mapping[str, Any], route_effort: str | None) -> str | None:
    """The reasoning effort to ask for: the client's ``reasoning_effort`` when given (the more
    specific wish), else the route selector's. ``minimal`` counts as low; ``none`` turns it off."""
    effort = body.get("reasoning_effort")
    if effort is None:
        effort = route_effort
    if effort is None or effort == "none":
        return None
    if effort == "minimal":
        return "low"
    if effort not in EFFORTS:
        raise InvalidRequest(
            f"'reasoning_effort' must be one of {', '.join(EFFORTS)}", param="reasoning_effort"
        )
    return str(effort)


def include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def refuse_common(body: Mapping[str, Any], family: str) -> None:
    """The OpenAI parameters that neither Ollama nor Anthropic can honour."""
    n = body.get("n")
    if n is not None and n != 1:
        raise UnsupportedParameter(f"the {family} family returns one choice per request (n=1)", param="n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise UnsupportedParameter(f"the {family} family does not return logprobs", param="logprobs")
    if body.get("logit_bias"):
        raise UnsupportedParameter(f"the {family} family has no logit_bias", param="logit_bias")
    modalities = body.get("modalities")
    if body.get("audio") or (isinstance(modalities, list) and "audio" in modalities):
        raise UnsupportedParameter(f"the {family} family does not produce audio", param="audio")


def prompt_of(body: Mapping[str, Any]) -> str:
    """The ``prompt`` of a ``/v1/completions`` request: one string (a list of one is fine)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise UnsupportedParameter("send one prompt per request", param="prompt")
    if isinstance(prompt, list):
        raise UnsupportedParameter("token-id prompts are not supported; send text", param="prompt")
    raise InvalidRequest("'prompt' must be a string", param="prompt")


# --- writing responses --------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, *, cached_tokens: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def assistant_message(
    text: str, tool_calls: Sequence[Mapping[str, Any]] = (), *, reasoning: str | None = None
) -> dict[str, Any]:
    """``content`` is None when the model only called tools (as OpenAI answers)."""
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = list(tool_calls)
    if reasoning:
        message["reasoning_content"] = reasoning
    return message


def chat_completion(
    *,
    id: str,
    model: str,
    message: Mapping[str, Any],
    finish_reason: str,
    usage: Mapping[str, Any] | None,
    created: int | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created if created is not None else now(),
        "model": model,
        "choices": [{"index": 0, "message": dict(message), "logprobs": None, "finish_reason": finish_reason}],
        "usage": dict(usage) if usage is not None else None,
    }


def text_completion(
    *, id: str, model: str, text: str, finish_reason: str | None, usage: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A ``text_completion`` object; also each chunk of a completions stream (same shape)."""
    out: dict[str, Any] = {
        "id": id,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        out["usage"] = dict(usage)
    return out


class ChunkWriter:
    """Makes the ``chat.completion.chunk`` objects of one stream: the role chunk, content and
    reasoning deltas, tool-call deltas (the first with id, type and name, then argument
    fragments), the finish chunk and, when the client asked, the usage chunk (``choices: []``)."""

    def __init__(self, *, id: str, model: str, include_usage: bool) -> None:
        self.id = id
        self.model = model
        self.include_usage = include_usage
        self.created = now()

    def chunk(self, delta: Mapping[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish_reason}],
        }

    def role(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""})

    def content(self, text: str) -> dict[str, Any]:
        return self.chunk({"content": text})

    def reasoning(self, text: str) -> dict[str, Any]:
        return self.chunk({"reasoning_content": text})

    def tool_call_start(self, index: int, call_id: str, name: str, arguments: str = "") -> dict[str, Any]:
        call = {"index": index, **tool_call(call_id, name, arguments)}
        return self.chunk({"tool_calls": [call]})

    def tool_call_arguments(self, index: int, fragment: str) -> dict[str, Any]:
        return self.chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def finish(self, finish_reason: str) -> dict[str, Any]:
        return self.chunk({}, finish_reason)

    def end(self, finish_reason: str, usage: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The last chunks of a stream that completed: finish, then usage if asked for."""
        chunks = [self.finish(finish_reason)]
        if self.include_usage:
            chunks.append(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": dict(usage),
                }
            )
        return chunks


def embedding_list(
    *, model: str, vectors: Sequence[Sequence[float]], prompt_tokens: int, encoding_format: Any
) -> dict[str, Any]:
    """The OpenAI embeddings answer. ``encoding_format: "base64"`` (the openai SDK's default)
    gives each vector as base64 of little-endian float32, which the SDK decodes."""
    encoding_format = encoding_format_of({"encoding_format": encoding_format})
    data = []
    for index, vector in enumerate(vectors):
        embedding: Any = list(vector)
        if encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def encoding_format_of(body: Mapping[str, Any]) -> str:
    """``encoding_format`` of an embeddings request: ``float`` (the default) or ``base64``."""
    value = body.get("encoding_format")
    if value is None:
        return "float"
    if value not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be float or base64", param="encoding_format")
    return str(value)


def embedding_inputs(body: Mapping[str, Any]) -> list[str]:
    """``input`` of an embeddings request: a string or a list of strings (not token ids)."""
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int | list) for v in value):
        raise UnsupportedParameter("token-id inputs are not supported; send text", param="input")
    raise InvalidRequest("'input' must be a string or a non-empty list of strings", param="input")


# --- reading upstream answers -------------------------------------------------------------------


@contextmanager
def protocol_guard(backend: str, what: str) -> Iterator[None]:
    """Inside the block, a malformed upstream answer (a missing key, a wrong type, a bad number)
    raises UpstreamProtocolError instead of a KeyError or TypeError."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, struct.error) as exc:
        raise UpstreamProtocolError(
            f"backend '{backend}' sent a malformed {what} ({type(exc).__name__}: {exc})", backend=backend
        ) from None


def int_field(data: Mapping[str, Any], key: str) -> int:
    """A token count that an upstream may leave out (0 then) but must not garble."""
    value = data.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"'{key}' is not an integer")
    return value


def str_field(data: Mapping[str, Any], key: str, *, optional: bool = False) -> str:
    """A string an upstream must send (or, when ``optional``, may leave out: "" then)."""
    value = data.get(key) if optional else data[key]
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"'{key}' is not a string")
    return value
