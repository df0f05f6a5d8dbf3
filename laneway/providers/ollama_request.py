"""OpenAI requests → Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/embed``
bodies), as pure functions.

Choices made here, and why:

- ``tool_choice``: Ollama has no way to force a tool, so a forced one is emulated
  (``forced_tool``) with what it does have, an answer constrained to a JSON schema (``format``):
  a named function (or ``required`` with one tool) makes that tool's parameters the schema, and
  the answer's JSON is returned as a call of that tool (``ollama_response``, ``ollama_stream``);
  ``required`` with several tools makes the schema "one of: ``{"name": <tool>, "arguments":
  <its parameters>}``", each name tied to its own arguments, and the answer is mapped to that
  tool's call. The tools themselves are then not sent (Ollama might read the JSON answer as a
  call of its own); a system note names the tool(s) and their descriptions instead. Several
  tools whose schemas define one name differently cannot share one schema faithfully: 422 (the
  router moves on to another lane). ``none`` sends no tools. ``parallel_tool_calls`` is a hint
  Ollama cannot follow either way and is ignored.
- Images must be inline (``data:`` URLs): Ollama takes base64 and cannot fetch a remote URL.
- Reasoning effort (the client's ``reasoning_effort`` or the route's) becomes ``think: true``
  (a route's effort only for a model discovery showed can think: see ``chat_request``);
  the model's thinking comes back as ``reasoning_content`` on the message or the delta.
- Completions use ``/api/generate`` with ``raw: true`` (plain continuation, no chat template),
  except with a ``suffix``, which needs the template to do fill-in-the-middle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from laneway.errors import InvalidRequest, UnsupportedParameter
from laneway.providers.base import Call
from laneway.providers.openai_format import (
    content_parts,
    effort_of,
    embedding_inputs,
    encoding_format_of,
    function_tools,
    image_url_of,
    max_tokens_of,
    messages_of,
    number_of,
    parse_data_url,
    prompt_of,
    refuse_common,
    stop_of,
    text_of,
    tool_calls_of,
    tool_choice_of,
)

FAMILY = "ollama"


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


@dataclass(frozen=True, slots=True)
class ForcedTool:
    """An emulated forced tool call: the tools the answer may call (one: its JSON is that tool's
    arguments; several: it is ``{"name", "arguments"}``) and the ``format`` that constrains it."""

    names: tuple[str, ...]
    schema: dict[str, Any]
    note: str  # the system note that tells the model what it is answering

    @property
    def single(self) -> str | None:
        return self.names[0] if len(self.names) == 1 else None


def forced_tool(body: Mapping[str, Any]) -> ForcedTool | None:
    """The forced tool call this request asks for, as Ollama gets it; None if it forces none."""
    tools = function_tools(body)
    choice = tool_choice_of(body)
    if not tools or choice in (None, "auto", "none"):
        return None
    chosen = tools if choice == "required" else [f for f in tools if f["name"] == choice]
    if not chosen:
        raise InvalidRequest(
            f"tool_choice names '{choice}', which is not one of the tools", param="tool_choice"
        )
    if len(chosen) == 1:
        schema = _parameters(chosen[0])
        note = f"Call the tool {_described(chosen[0])}. Answer with its arguments only, as a JSON object."
    else:
        schema = _one_of(chosen)
        listed = "\n".join(f"- {_described(f)}" for f in chosen)
        note = (
            'Call one of these tools, answering with a JSON object {"name": <the tool>, '
            f'"arguments": <its arguments>}} only:\n{listed}'
        )
    return ForcedTool(tuple(f["name"] for f in chosen), schema, note)


def _parameters(function: Mapping[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters")
    return parameters if isinstance(parameters, dict) else {"type": "object", "properties": {}}


def _described(function: Mapping[str, Any]) -> str:
    name, description = function["name"], function.get("description")
    return f"{name}: {description}" if isinstance(description, str) and description else str(name)


def _one_of(functions: list[dict[str, Any]]) -> dict[str, Any]:
    """One schema for a call of any of ``functions``: each name with its own arguments. Their
    definitions (``$defs``) move to the root, where their ``$ref``s point."""
    defs: dict[str, Any] = {}
    branches = []
    for function in functions:
        arguments = dict(_parameters(function))
        for key, value in (arguments.pop("$defs", None) or {}).items():
            if defs.setdefault(key, value) != value:
                raise UnsupportedParameter(
                    f"Ollama cannot be made to call one of these tools: two define '{key}' differently",
                    param="tool_choice",
                )
        name = {"type": "string", "enum": [function["name"]]}
        branches.append(
            {
                "type": "object",
                "properties": {"name": name, "arguments": arguments},
                "required": ["name", "arguments"],
            }
        )
    return {"anyOf": branches, **({"$defs": defs} if defs else {})}


def _noted(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    """``messages`` with ``note`` in the system message at their head (one made if none)."""
    if messages and messages[0]["role"] == "system":
        head = messages[0]
        return [{**head, "content": "\n\n".join(filter(None, [head["content"], note]))}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def chat_request(call: Call, *, stream: bool, thinks: bool | None = None) -> dict[str, Any]:
    """An OpenAI chat request → an ``/api/chat`` body. ``thinks``: whether the model can think,
    if known (Ollama answers 400 to ``think: true`` for a model that cannot)."""
    out = _common(call, stream)
    out["messages"] = chat_messages(messages_of(call.body))
    tools = function_tools(call.body)
    choice = tool_choice_of(call.body)
    forced = forced_tool(call.body)
    if forced is not None:
        out["format"] = forced.schema  # the tool call's JSON is the answer (and no tools sent)
        out["messages"] = _noted(out["messages"], forced.note)
    elif tools and choice != "none":
        out["tools"] = [{"type": "function", "function": function} for function in tools]
    if effort_of(call.body, call.effort) is not None:
        # Ollama answers 400 to think: true for a model that cannot think, and a model that can
        # thinks by default, so a route's effort is only sent to models known to think; a client
        # asking for reasoning itself gets it unless discovery showed the model cannot (then it
        # is answered without: reasoning is a preference, see ``routing.needs``).
        if thinks or (thinks is None and call.body.get("reasoning_effort") is not None):
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
