"""OpenAI format ⇄ Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/embed``,
``/api/show``), as pure functions and small stream translators that need no server.

Choices made here, and why:

- ``tool_choice``: Ollama has no way to force a tool, so ``required`` and a named function are
  refused (422) rather than silently ignored; ``none`` sends no tools. ``parallel_tool_calls`` is
  a hint Ollama cannot follow either way and is ignored.
- Images must be inline (``data:`` URLs): Ollama takes base64 and cannot fetch a remote URL.
- Reasoning effort (the client's ``reasoning_effort`` or the route's) becomes ``think: true``
  (a route's effort only for a model discovery showed can think: see ``chat_request``);
  the model's thinking comes back as ``reasoning_content`` on the message or the delta.
- Completions use ``/api/generate`` with ``raw: true`` (plain continuation, no chat template),
  except with a ``suffix``, which needs the template to do fill-in-the-middle.
- Usage (``usage_of``) is ``prompt_eval_count`` / ``eval_count`` of the final answer or the
  ``done`` line of a stream; a stream's usage is therefore known only once it ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from laneway.errors import (
    InvalidRequest,
    StreamBroken,
    UnsupportedParameter,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from laneway.providers.base import Call, ModelInfo, Usage
from laneway.providers.capabilities import capabilities_from_name
from laneway.providers.openai_format import (
    ChunkWriter,
    assistant_message,
    chat_completion,
    content_parts,
    effort_of,
    embedding_inputs,
    embedding_list,
    encoding_format_of,
    function_tools,
    image_url_of,
    include_usage,
    int_field,
    max_tokens_of,
    messages_of,
    new_id,
    number_of,
    parse_data_url,
    prompt_of,
    protocol_guard,
    refuse_common,
    stop_of,
    str_field,
    text_completion,
    text_of,
    tool_call,
    tool_calls_of,
    tool_choice_of,
    usage,
)

FAMILY = "ollama"

# --- requests -----------------------------------------------------------------------------------


def _user_message(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    images: list[str] = []
    for part in content_parts(message.get("content"), where):
        kind = part["type"]
        if kind == "text":
            texts.append(part["text"])
        elif kind == "image_url":
            url = image_url_of(part)
            inline = parse_data_url(url)
            if inline is None:
                raise UnsupportedParameter(
                    f"{where}: Ollama cannot fetch image URLs; send the image as a data: URL",
                    param="messages",
                )
            images.append(inline[1])
        else:
            raise UnsupportedParameter(
                f"{where}: '{kind}' content is not supported by Ollama", param="messages"
            )
    out: dict[str, Any] = {"role": "user", "content": "\n".join(texts)}
    if images:
        out["images"] = images
    return out


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages → Ollama messages. Tool results name their tool (``tool_name``),
    which Ollama wants instead of the call id; the name is looked up from the assistant turn."""
    out: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        role, where = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            out.append({"role": "system", "content": text_of(message.get("content"), where)})
        elif role == "user":
            out.append(_user_message(message, where))
        elif role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": text_of(message.get("content"), where)}
            calls = tool_calls_of(message, where)
            if calls:
                turn["tool_calls"] = [
                    {"function": {"name": name, "arguments": args}} for _, name, args in calls
                ]
                tool_names.update((call_id, name) for call_id, name, _ in calls if call_id)
            if isinstance(message.get("reasoning_content"), str):
                turn["thinking"] = message["reasoning_content"]
            out.append(turn)
        elif role == "tool":
            result: dict[str, Any] = {"role": "tool", "content": text_of(message.get("content"), where)}
            name = tool_names.get(str(message.get("tool_call_id"))) or message.get("name")
            if isinstance(name, str):
                result["tool_name"] = name
            out.append(result)
        else:
            raise InvalidRequest(f"{where}: unknown role '{role}'", param="messages")
    return out


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty"):
        value = number_of(body, key)
        if value is not None:
            options[key] = value
    seed = body.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise InvalidRequest("'seed' must be an integer", param="seed")
        options["seed"] = seed
    max_tokens = max_tokens_of(body)
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    stop = stop_of(body)
    if stop:
        options["stop"] = stop
    return options


def _format(body: Mapping[str, Any]) -> str | dict[str, Any] | None:
    response_format = body.get("response_format")
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = response_format.get("json_schema")
        schema = schema.get("schema") if isinstance(schema, Mapping) else None
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "response_format.json_schema.schema must be an object", param="response_format"
            )
        return schema
    raise InvalidRequest(
        "response_format.type must be text, json_object or json_schema", param="response_format"
    )


def _common(call: Call, stream: bool) -> dict[str, Any]:
    body = call.body
    refuse_common(body, FAMILY)
    out: dict[str, Any] = {"model": call.model, "stream": stream}
    options = _options(body)
    if options:
        out["options"] = options
    fmt = _format(body)
    if fmt is not None:
        out["format"] = fmt
    return out


def chat_request(call: Call, *, stream: bool, thinks: bool | None = None) -> dict[str, Any]:
    """An OpenAI chat request → an ``/api/chat`` body. ``thinks``: whether the model can think,
    if known (Ollama answers 400 to ``think: true`` for a model that cannot)."""
    out = _common(call, stream)
    out["messages"] = chat_messages(messages_of(call.body))
    tools = function_tools(call.body)
    choice = tool_choice_of(call.body)
    if choice not in (None, "auto", "none"):
        raise UnsupportedParameter(
            "Ollama cannot force a tool call; use tool_choice 'auto'", param="tool_choice"
        )
    if tools and choice != "none":
        out["tools"] = [{"type": "function", "function": function} for function in tools]
    if effort_of(call.body, call.effort) is not None:
        # Ollama answers 400 to think: true for a model that cannot think, and a model that can
        # thinks by default, so a route's effort is only sent to models known to think. A client
        # asking for reasoning itself gets what it asked for (and Ollama's answer).
        if thinks or call.body.get("reasoning_effort") is not None:
            out["think"] = True
    elif call.body.get("reasoning_effort") == "none":
        out["think"] = False
    return out


def generate_request(call: Call, *, stream: bool) -> dict[str, Any]:
    """An OpenAI ``/v1/completions`` request → an ``/api/generate`` body."""
    body = call.body
    if body.get("echo"):
        raise UnsupportedParameter("Ollama cannot echo the prompt", param="echo")
    if body.get("best_of") not in (None, 1):
        raise UnsupportedParameter("Ollama returns one completion per request", param="best_of")
    out = _common(call, stream)
    out["prompt"] = prompt_of(body)
    suffix = body.get("suffix")
    if suffix:
        if not isinstance(suffix, str):
            raise InvalidRequest("'suffix' must be a string", param="suffix")
        out["suffix"] = suffix  # fill-in-the-middle goes through the model's template
    else:
        out["raw"] = True
    return out


def embed_request(call: Call) -> dict[str, Any]:
    """An OpenAI embeddings request → an ``/api/embed`` body."""
    inputs = embedding_inputs(call.body)
    encoding_format_of(call.body)  # refused before the backend does the work
    out: dict[str, Any] = {
        "model": call.model,
        "input": inputs[0] if isinstance(call.body["input"], str) else inputs,
    }
    dimensions = call.body.get("dimensions")
    if dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            raise InvalidRequest("'dimensions' must be a positive integer", param="dimensions")
        out["dimensions"] = dimensions
    return out


# --- answers ------------------------------------------------------------------------------------


def _raise_if_error(data: Mapping[str, Any], backend: str) -> None:
    """Ollama reports failures inside a 200 stream as ``{"error": "..."}``."""
    error = data.get("error")
    if error is not None:
        raise UpstreamStatusError(
            f"backend '{backend}' reported an error: {error}", backend=backend, upstream_status=500
        )


def _tool_calls(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Ollama tool calls (arguments as an object) → OpenAI tool calls (arguments as a string)."""
    out = []
    for call in message.get("tool_calls") or []:
        function = call["function"]
        name, arguments = function["name"], function.get("arguments") or {}
        if not isinstance(name, str) or not isinstance(arguments, dict | str):
            raise TypeError("tool call without a name or with non-object arguments")
        encoded = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
        call_id = call.get("id")
        out.append(
            tool_call(call_id if isinstance(call_id, str) and call_id else new_id("call"), name, encoded)
        )
    return out


def _finish_reason(data: Mapping[str, Any], called_tools: bool) -> str:
    if called_tools:
        return "tool_calls"
    return "length" if data.get("done_reason") == "length" else "stop"


def _usage(data: Mapping[str, Any]) -> dict[str, Any]:
    return usage(int_field(data, "prompt_eval_count"), int_field(data, "eval_count"))


def usage_of(data: Mapping[str, Any]) -> Usage | None:
    """The tokens a final answer (or ``done`` line) reports; None if it reports neither count.
    Unlike the OpenAI body, which says 0 for a missing count, a missing count stays None here:
    Ollama leaves ``prompt_eval_count`` out when the whole prompt came from its cache."""
    prompt, completion = _reported(data, "prompt_eval_count"), _reported(data, "eval_count")
    return None if prompt is None and completion is None else Usage(prompt, completion)


def _reported(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def chat_response(data: Mapping[str, Any], *, model: str, backend: str = "") -> dict[str, Any]:
    """An ``/api/chat`` answer → an OpenAI ``chat.completion``."""
    _raise_if_error(data, backend)
    with protocol_guard(backend, "chat answer"):
        message = data["message"]
        calls = _tool_calls(message)
        reply = assistant_message(
            str_field(message, "content", optional=True),
            calls,
            reasoning=str_field(message, "thinking", optional=True) or None,
        )
        return chat_completion(
            id=new_id("chatcmpl"),
            model=data.get("model") or model,
            message=reply,
            finish_reason=_finish_reason(data, bool(calls)),
            usage=_usage(data),
        )


def generate_response(data: Mapping[str, Any], *, model: str, backend: str = "") -> dict[str, Any]:
    """An ``/api/generate`` answer → an OpenAI ``text_completion``."""
    _raise_if_error(data, backend)
    with protocol_guard(backend, "generate answer"):
        return text_completion(
            id=new_id("cmpl"),
            model=data.get("model") or model,
            text=str_field(data, "response"),
            finish_reason=_finish_reason(data, False),
            usage=_usage(data),
        )


def embed_response(
    data: Mapping[str, Any], *, model: str, encoding_format: Any = None, backend: str = ""
) -> dict[str, Any]:
    """An ``/api/embed`` answer → an OpenAI embeddings ``list``."""
    _raise_if_error(data, backend)
    with protocol_guard(backend, "embed answer"):
        vectors = data["embeddings"]
        if not isinstance(vectors, list) or not all(
            isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in vectors
        ):
            raise TypeError("'embeddings' is not a list of number lists")
        return embedding_list(
            model=data.get("model") or model,
            vectors=vectors,
            prompt_tokens=int_field(data, "prompt_eval_count"),
            encoding_format=encoding_format,
        )


# --- streams ------------------------------------------------------------------------------------


def parse_line(line: bytes, backend: str = "") -> dict[str, Any] | None:
    """One NDJSON line of an Ollama stream; None for a blank line."""
    if not line.strip():
        return None
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(
            f"backend '{backend}' sent a stream line that is not JSON", backend=backend
        ) from None
    if not isinstance(data, dict):
        raise UpstreamProtocolError(
            f"backend '{backend}' sent a stream line that is not an object", backend=backend
        )
    return data


class _LineStream:
    """Shared state of an Ollama stream: it must end with a ``done: true`` line."""

    what = "stream"

    def __init__(self, *, model: str, include_usage: bool, backend: str = "") -> None:
        self.model = model
        self.include_usage = include_usage
        self.backend = backend
        self.done = False
        self.usage: Usage | None = None  # from the ``done`` line: None until the stream ended

    def feed(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        _raise_if_error(data, self.backend)
        if self.done:
            raise UpstreamProtocolError(
                f"backend '{self.backend}' sent data after 'done'", backend=self.backend
            )
        with protocol_guard(self.backend, f"{self.what} line"):
            return self._feed(data)

    def _feed(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """Called when the upstream body ended; a stream without its ``done`` line was cut off."""
        if not self.done:
            raise StreamBroken(
                f"backend '{self.backend}' ended its stream before 'done'", backend=self.backend
            )


class ChatStream(_LineStream):
    """``/api/chat`` NDJSON lines → ``chat.completion.chunk`` objects. Ollama sends each tool
    call whole, so one delta carries its id, name and all of its arguments."""

    what = "chat stream"

    def __init__(self, *, model: str, include_usage: bool, backend: str = "") -> None:
        super().__init__(model=model, include_usage=include_usage, backend=backend)
        self.writer: ChunkWriter | None = None
        self.tool_calls = 0

    def _feed(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        out = []
        if self.writer is None:
            self.writer = ChunkWriter(
                id=new_id("chatcmpl"), model=data.get("model") or self.model, include_usage=self.include_usage
            )
            out.append(self.writer.role())
        writer = self.writer
        message = data.get("message") or {}
        if thinking := str_field(message, "thinking", optional=True):
            out.append(writer.reasoning(thinking))
        if content := str_field(message, "content", optional=True):
            out.append(writer.content(content))
        for call in _tool_calls(message):
            function = call["function"]
            out.append(
                writer.tool_call_start(self.tool_calls, call["id"], function["name"], function["arguments"])
            )
            self.tool_calls += 1
        if data.get("done") is True:
            self.done = True
            self.usage = usage_of(data)
            out.extend(writer.end(_finish_reason(data, self.tool_calls > 0), _usage(data)))
        return out


class GenerateStream(_LineStream):
    """``/api/generate`` NDJSON lines → ``text_completion`` chunks."""

    what = "generate stream"

    def __init__(self, *, model: str, include_usage: bool, backend: str = "") -> None:
        super().__init__(model=model, include_usage=include_usage, backend=backend)
        self.id = new_id("cmpl")

    def _feed(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        model = data.get("model") or self.model
        out = []
        if text := str_field(data, "response", optional=True):
            out.append(text_completion(id=self.id, model=model, text=text, finish_reason=None))
        if data.get("done") is True:
            self.done = True
            self.usage = usage_of(data)
            out.append(
                text_completion(id=self.id, model=model, text="", finish_reason=_finish_reason(data, False))
            )
            if self.include_usage:
                last = text_completion(
                    id=self.id, model=model, text="", finish_reason=None, usage=_usage(data)
                )
                last["choices"] = []
                out.append(last)
        return out


def chat_stream(call: Call, backend: str = "") -> ChatStream:
    return ChatStream(model=call.model, include_usage=include_usage(call.body), backend=backend)


def generate_stream(call: Call, backend: str = "") -> GenerateStream:
    return GenerateStream(model=call.model, include_usage=include_usage(call.body), backend=backend)


# --- discovery ----------------------------------------------------------------------------------


def tag_names(data: Mapping[str, Any], backend: str = "") -> list[str]:
    """The model names in an ``/api/tags`` answer."""
    with protocol_guard(backend, "/api/tags answer"):
        models = data["models"]
        if not isinstance(models, list):
            raise TypeError("'models' is not a list")
        names = []
        for entry in models:
            name = entry.get("name") or entry.get("model")
            if isinstance(name, str) and name:
                names.append(name)
        return names


def running_names(data: Mapping[str, Any], backend: str = "") -> set[str]:
    """The models in memory, from an ``/api/ps`` answer (entries name their model in ``name``
    and ``model``; an entry without a name is skipped)."""
    with protocol_guard(backend, "/api/ps answer"):
        models = data["models"]
        if not isinstance(models, list):
            raise TypeError("'models' is not a list")
        names: set[str] = set()
        for entry in models:
            if isinstance(entry, Mapping):
                names.update(v for v in (entry.get("name"), entry.get("model")) if isinstance(v, str) and v)
        return names


_CAPABILITY_NAMES = {"tools": "tools", "vision": "vision", "thinking": "reasoning"}


def model_info(name: str, show: Mapping[str, Any] | None) -> ModelInfo:
    """A model from its ``/api/show`` answer: ``capabilities`` (Ollama ≥ 0.6) give its lane types
    and capabilities, ``model_info["<arch>.context_length"]`` its context length. Whatever the
    answer lacks (or when there is none) is guessed from the name."""
    types, caps = capabilities_from_name(name)
    context_length = None
    if isinstance(show, Mapping):
        listed = show.get("capabilities")
        if isinstance(listed, list) and listed:
            shown_types = set()
            if "completion" in listed:
                shown_types |= {"chat", "completion"}
            if "embedding" in listed:
                shown_types.add("embedding")
            if shown_types:
                types = shown_types
            caps = set(types) | {_CAPABILITY_NAMES[c] for c in listed if c in _CAPABILITY_NAMES}
        info = show.get("model_info")
        if isinstance(info, Mapping):
            arch = info.get("general.architecture")
            value = info.get(f"{arch}.context_length")
            if not isinstance(value, int):
                value = next((v for k, v in info.items() if k.endswith(".context_length")), None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                context_length = value
    return ModelInfo(
        id=name, types=frozenset(types), capabilities=frozenset(caps), context_length=context_length
    )
