"""Ollama's answers → the OpenAI format, as pure functions: an ``/api/chat``, ``/api/generate``
or ``/api/embed`` answer (and the pieces a stream's lines share with them), and discovery's
``/api/tags``, ``/api/ps`` and ``/api/show`` answers.

An emulated forced tool call (``ollama_request.forced_tool``): the answer's content is the JSON
``format`` constrained it to, returned as the call of that tool (``forced_call``).

Usage (``usage_of``) is ``prompt_eval_count`` / ``eval_count`` of the final answer or the ``done``
line of a stream; a stream's usage is therefore known only once it ended.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from laneway.errors import UpstreamStatusError
from laneway.providers.base import ModelInfo, Usage
from laneway.providers.capabilities import EMBEDDING_TYPES, TEXT_TYPES, capabilities_from_name
from laneway.providers.ollama_request import ForcedTool
from laneway.providers.openai_format import (
    assistant_message,
    chat_completion,
    embedding_list,
    int_field,
    new_id,
    protocol_guard,
    str_field,
    text_completion,
    tool_call,
    usage,
)


def raise_if_error(data: Mapping[str, Any], backend: str) -> None:
    """Ollama reports failures inside a 200 stream as ``{"error": "..."}``."""
    error = data.get("error")
    if error is not None:
        raise UpstreamStatusError(
            f"backend '{backend}' reported an error: {error}", backend=backend, upstream_status=500
        )


def openai_tool_calls(message: Mapping[str, Any]) -> list[dict[str, Any]]:
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


def finish_reason(data: Mapping[str, Any], called_tools: bool) -> str:
    if called_tools:
        return "tool_calls"
    return "length" if data.get("done_reason") == "length" else "stop"


def openai_usage(data: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI ``usage`` object of an answer or ``done`` line (a count left out is 0 there)."""
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


def call_id() -> str:
    """A tool call id of OpenAI's shape (``call_...``), for a call laneway made of an answer."""
    return "call_" + uuid.uuid4().hex[:24]


def forced_call(forced: ForcedTool, content: str) -> dict[str, Any] | None:
    """The tool call an emulated forced call's answer makes. One tool: the answer is its arguments
    (as they came, like any model's arguments: a cut-off answer's are cut off too). Several: the
    answer names the tool and holds its arguments; None if it does not (then it stays content)."""
    if forced.single is not None:
        return tool_call(call_id(), forced.single, content.strip() or "{}")
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or value.get("name") not in forced.names:
        return None
    arguments = value.get("arguments")
    if not isinstance(arguments, dict):
        return None
    return tool_call(call_id(), str(value["name"]), orjson.dumps(arguments).decode())


def forced_finish(data: Mapping[str, Any], called_tools: bool) -> str:
    """An emulated call cut off by ``num_predict`` says so ("length"), as OpenAI's would."""
    return "length" if data.get("done_reason") == "length" else finish_reason(data, called_tools)


def chat_response(
    data: Mapping[str, Any], *, model: str, backend: str = "", forced: ForcedTool | None = None
) -> dict[str, Any]:
    """An ``/api/chat`` answer → an OpenAI ``chat.completion``. ``forced``: the request's
    emulated forced tool call, if it had one."""
    raise_if_error(data, backend)
    with protocol_guard(backend, "chat answer"):
        message = data["message"]
        calls = openai_tool_calls(message)
        content = str_field(message, "content", optional=True)
        finish = finish_reason(data, bool(calls))
        if forced is not None and not calls:
            if (call := forced_call(forced, content)) is not None:
                calls, content = [call], ""
            finish = forced_finish(data, bool(calls))
        reply = assistant_message(
            content, calls, reasoning=str_field(message, "thinking", optional=True) or None
        )
        return chat_completion(
            id=new_id("chatcmpl"),
            model=data.get("model") or model,
            message=reply,
            finish_reason=finish,
            usage=openai_usage(data),
        )


def generate_response(data: Mapping[str, Any], *, model: str, backend: str = "") -> dict[str, Any]:
    """An ``/api/generate`` answer → an OpenAI ``text_completion``."""
    raise_if_error(data, backend)
    with protocol_guard(backend, "generate answer"):
        return text_completion(
            id=new_id("cmpl"),
            model=data.get("model") or model,
            text=str_field(data, "response"),
            finish_reason=finish_reason(data, False),
            usage=openai_usage(data),
        )


def embed_response(
    data: Mapping[str, Any], *, model: str, encoding_format: Any = None, backend: str = ""
) -> dict[str, Any]:
    """An ``/api/embed`` answer → an OpenAI embeddings ``list``."""
    raise_if_error(data, backend)
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


def listed_capabilities(show: Mapping[str, Any]) -> list[str]:
    """The ``capabilities`` an ``/api/show`` answer lists (Ollama ≥ 0.6); [] when it lists none."""
    listed = show.get("capabilities")
    return [c for c in listed if isinstance(c, str)] if isinstance(listed, list) else []


def model_info(name: str, show: Mapping[str, Any] | None) -> ModelInfo:
    """A model from its ``/api/show`` answer: ``capabilities`` (Ollama ≥ 0.6) give its lane types
    and capabilities, ``model_info["<arch>.context_length"]`` its context length. Whatever the
    answer lacks (or when there is none) is guessed from the name."""
    types, caps = capabilities_from_name(name)
    context_length = None
    if isinstance(show, Mapping):
        listed = listed_capabilities(show)
        if listed:
            shown_types: set[str] = set()
            if "completion" in listed:  # Ollama's words for what a model does
                shown_types |= TEXT_TYPES
            if "embedding" in listed:
                shown_types |= EMBEDDING_TYPES
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
