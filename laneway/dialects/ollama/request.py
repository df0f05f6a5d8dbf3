"""Ollama request bodies → OpenAI request bodies (the format the router and every provider speak),
as pure functions: ``/api/chat`` and ``/api/generate`` become chat (or, raw, completion) requests,
``/api/embed`` and ``/api/embeddings`` embedding requests.

Choices made here, and why:

- ``stream`` is true unless the client says false: Ollama's default, which its clients rely on.
- Tool calls: Ollama's carry no id and a tool result names its tool (``tool_name``), where
  OpenAI's (and Anthropic's) pair a result with its call by id. Each assistant tool call gets an id
  here and each tool message the id of the first unanswered call of its name, so every family
  receives a well-formed conversation.
- Images are base64 with no media type; the type is read from the data's magic bytes (Anthropic
  refuses an image whose declared type is wrong).
- ``think`` (true, false or an effort) becomes ``reasoning_effort`` (true: ``medium``; false:
  ``none``, which every provider reads as "do not think").
- ``options``: what has an OpenAI meaning (``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``,
  the penalties, ``num_predict`` as ``max_tokens``) is carried over; what only tunes an Ollama
  runner (``num_ctx``, ``num_gpu``, ``repeat_penalty``, ``mirostat``...) is ignored, as Ollama itself
  ignores options it does not know. ``keep_alive`` and ``truncate`` are ignored likewise.
- ``/api/generate`` applies the model's chat template (unless ``raw``), so it is a chat turn:
  ``system`` and ``prompt`` become messages. ``raw`` (no template) and ``suffix`` (fill in the middle)
  are plain completions. ``template`` and ``context`` (Ollama's token history) cannot be honoured
  through other families and are refused rather than silently dropped.
- An empty prompt (generate) or no messages (chat) is Ollama's "load the model" request: it is
  answered without calling a model (``is_load``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from laneway.errors import InvalidRequest, UnsupportedParameter
from laneway.operations import Operation

EFFORTS = ("low", "medium", "high")
# Ollama options that carry over unchanged (the rest only tune Ollama's runner, or are unknown)
NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
INTEGERS = ("top_k", "seed")
# The start of the base64 of each image format's magic bytes
IMAGE_TYPES = (
    ("iVBORw0KGgo", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)


@dataclass(frozen=True, slots=True)
class Translated:
    """An Ollama request as the router serves it: the operation, its OpenAI body, streamed or not."""

    op: Operation
    body: dict[str, Any]
    stream: bool


# --- fields -------------------------------------------------------------------------------------


def model_of(body: Mapping[str, Any]) -> str:
    """The ``model`` (older clients send ``name``), in Ollama's words when it is missing."""
    model = body.get("model", body.get("name"))
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model is required", param="model")
    return model


def _str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"'{key}' must be a string", param=key)
    return value


def _bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be true or false", param=key)
    return value


def _number(value: Any, key: str, *, integer: bool = False) -> int | float:
    kinds = int if integer else int | float
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be {'an integer' if integer else 'a number'}", param=key)
    return value


def stream_of(body: Mapping[str, Any]) -> bool:
    return _bool(body, "stream", True)


# --- what every generating request shares ----------------------------------------------------------


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidRequest("'options' must be an object", param="options")
    out: dict[str, Any] = {}
    for key in NUMBERS:
        if options.get(key) is not None:
            out[key] = _number(options[key], f"options.{key}")
    for key in INTEGERS:
        if options.get(key) is not None:
            out[key] = _number(options[key], f"options.{key}", integer=True)
    num_predict = options.get("num_predict")
    # -1 (no limit) and -2 (fill the context) have no OpenAI spelling: no max_tokens says the same.
    if num_predict is not None and _number(num_predict, "options.num_predict", integer=True) > 0:
        out["max_tokens"] = num_predict
    stop = options.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("'options.stop' must be a list of strings", param="options.stop")
        if stop:
            out["stop"] = stop
    return out


def _format(body: Mapping[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("format")
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    raise InvalidRequest("'format' must be \"json\" or a JSON schema object", param="format")


def _effort(body: Mapping[str, Any]) -> str | None:
    think = body.get("think")
    if think is None:
        return None
    if think is True:
        return "medium"
    if think is False:
        return "none"
    if think in EFFORTS:
        return str(think)
    raise InvalidRequest('\'think\' must be true, false, "low", "medium" or "high"', param="think")


def _refuse_logprobs(body: Mapping[str, Any]) -> None:
    if body.get("logprobs") or body.get("top_logprobs"):
        raise UnsupportedParameter("laneway's Ollama API does not return logprobs", param="logprobs")


def _generation(body: Mapping[str, Any], model: str, *, chat: bool) -> dict[str, Any]:
    """The OpenAI body's model and sampling (and, for chat, ``format`` and ``think``)."""
    _refuse_logprobs(body)
    out: dict[str, Any] = {"model": model, **_options(body)}
    fmt, effort = _format(body), _effort(body)
    if chat:
        if fmt is not None:
            out["response_format"] = fmt
        if effort is not None:
            out["reasoning_effort"] = effort
    elif fmt is not None or effort not in (None, "none"):
        raise UnsupportedParameter(
            "'format' and 'think' need the chat template; a raw or suffix generate cannot take them",
            param="format" if fmt is not None else "think",
        )
    if stream_of(body):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # the last NDJSON line carries the counts
    return out


# --- messages -------------------------------------------------------------------------------------


def image_url(data: Any, where: str) -> dict[str, Any]:
    """A base64 image (Ollama's) → an OpenAI ``image_url`` part with a data URL."""
    if not isinstance(data, str) or not data:
        raise InvalidRequest(f"{where}: each image must be a base64 string", param="images")
    data = data.strip()
    media = next((kind for prefix, kind in IMAGE_TYPES if data.startswith(prefix)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}


def _user(content: str, images: Any, where: str) -> dict[str, Any]:
    if images in (None, []):
        return {"role": "user", "content": content}
    if not isinstance(images, list):
        raise InvalidRequest(f"{where}: 'images' must be a list of base64 strings", param="images")
    parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
    parts += [image_url(image, where) for image in images]
    return {"role": "user", "content": parts}


def _arguments(arguments: Any, where: str) -> str:
    if arguments is None:
        return "{}"
    if isinstance(arguments, dict):
        return orjson.dumps(arguments).decode()
    if isinstance(arguments, str):
        try:
            if isinstance(orjson.loads(arguments), dict):
                return arguments
        except orjson.JSONDecodeError:
            pass
    raise InvalidRequest(f"{where}: tool call arguments must be an object", param="messages")


class _Calls:
    """The tool calls the conversation made and which of them a tool message answered yet."""

    def __init__(self) -> None:
        self.open: list[tuple[str, str]] = []  # (id, name), oldest first

    def assistant(self, calls: Any, index: int, where: str) -> list[dict[str, Any]]:
        if not isinstance(calls, list):
            raise InvalidRequest(f"{where}: 'tool_calls' must be a list", param="messages")
        out = []
        for j, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise InvalidRequest(f"{where}: each tool call needs function.name", param="messages")
            given = call.get("id")
            call_id = given if isinstance(given, str) and given else f"call_{index}_{j}"
            name = function["name"]
            self.open.append((call_id, name))
            arguments = _arguments(function.get("arguments"), where)
            out.append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            )
        return out

    def answered_by(self, message: Mapping[str, Any], index: int) -> str:
        """The id of the call a tool message answers: its own ``tool_call_id``, else the first
        open call of its ``tool_name``, else the first open call."""
        given = message.get("tool_call_id")
        name = message.get("tool_name") or message.get("name")
        match = next((c for c in self.open if c[0] == given), None)
        match = match or next((c for c in self.open if c[1] == name), None)
        match = match or (self.open[0] if self.open else None)
        if match is None:
            return given if isinstance(given, str) and given else f"call_{index}_unmatched"
        self.open.remove(match)
        return match[0]


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """Ollama chat messages → OpenAI chat messages."""
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list", param="messages")
    calls = _Calls()
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object", param="messages")
        role, content = message.get("role"), _str(message, "content")
        if role != "user" and message.get("images"):
            raise UnsupportedParameter(f"{where}: only user messages may carry images", param="images")
        if role == "system":
            out.append({"role": "system", "content": content})
        elif role == "user":
            out.append(_user(content, message.get("images"), where))
        elif role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": content}
            if message.get("tool_calls"):
                turn["tool_calls"] = calls.assistant(message["tool_calls"], i, where)
                turn["content"] = content or None
            if isinstance(message.get("thinking"), str) and message["thinking"]:
                turn["reasoning_content"] = message["thinking"]
            out.append(turn)
        elif role == "tool":
            out.append({"role": "tool", "tool_call_id": calls.answered_by(message, i), "content": content})
        else:
            raise InvalidRequest(
                f"{where}: role must be system, user, assistant or tool, not {role!r}", param="messages"
            )
    return out


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools in (None, []):
        return None
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list", param="tools")
    out = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("each tool needs function.name", param="tools")
        if tool.get("type", "function") != "function":
            raise UnsupportedParameter(
                f"only function tools are supported, not {tool['type']!r}", param="tools"
            )
        out.append({"type": "function", "function": function})
    return out


# --- the endpoints ------------------------------------------------------------------------------------


def is_load(path: str, body: Mapping[str, Any]) -> bool:
    """Ollama's "load this model" request: no messages, no prompt. Answered without a model call."""
    if path == "chat":
        return not body.get("messages")
    if path == "generate":
        return not body.get("prompt") and not body.get("images") and not body.get("suffix")
    if path == "embeddings":
        return not body.get("prompt")
    return False


def chat_request(body: Mapping[str, Any]) -> Translated:
    """An ``/api/chat`` body → an OpenAI chat request."""
    model = model_of(body)
    out = _generation(body, model, chat=True)
    out["messages"] = chat_messages(body.get("messages"))
    tools = _tools(body)
    if tools:
        out["tools"] = tools
    return Translated(Operation.CHAT, out, stream_of(body))


def generate_request(body: Mapping[str, Any]) -> Translated:
    """An ``/api/generate`` body → an OpenAI chat request (``system`` and ``prompt`` as messages),
    or with ``raw`` or a ``suffix``, a completion request."""
    model = model_of(body)
    prompt, suffix, system = _str(body, "prompt"), _str(body, "suffix"), _str(body, "system")
    if _str(body, "template"):
        raise UnsupportedParameter(
            "laneway does not apply Ollama templates; send the messages to /api/chat", param="template"
        )
    if body.get("context"):
        raise UnsupportedParameter(
            "laneway keeps no token context; send the conversation to /api/chat", param="context"
        )
    if _bool(body, "raw", False) or suffix:
        if body.get("images"):
            raise UnsupportedParameter("images need the chat template, not raw or suffix", param="images")
        out = _generation(body, model, chat=False)
        out["prompt"] = prompt
        if suffix:
            out["suffix"] = suffix
        return Translated(Operation.COMPLETION, out, stream_of(body))
    out = _generation(body, model, chat=True)
    messages = [{"role": "system", "content": system}] if system else []
    out["messages"] = [*messages, _user(prompt, body.get("images"), "prompt")]
    return Translated(Operation.CHAT, out, stream_of(body))


def embed_request(body: Mapping[str, Any]) -> Translated:
    """An ``/api/embed`` body (``input``: a string or a list of them) → an OpenAI embeddings request."""
    model = model_of(body)
    inputs = body.get("input")
    if isinstance(inputs, list) and not inputs:
        raise InvalidRequest("'input' must hold at least one string", param="input")
    if not isinstance(inputs, str) and not (
        isinstance(inputs, list) and all(isinstance(s, str) for s in inputs)
    ):
        raise InvalidRequest("'input' must be a string or a list of strings", param="input")
    out: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if _number(dimensions, "dimensions", integer=True) < 1:
            raise InvalidRequest("'dimensions' must be a positive integer", param="dimensions")
        out["dimensions"] = dimensions
    return Translated(Operation.EMBEDDING, out, False)


def embeddings_request(body: Mapping[str, Any]) -> Translated:
    """An ``/api/embeddings`` body (the older API: one ``prompt``) → an OpenAI embeddings request."""
    model = model_of(body)
    prompt = _str(body, "prompt")
    return Translated(
        Operation.EMBEDDING, {"model": model, "input": prompt, "encoding_format": "float"}, False
    )
