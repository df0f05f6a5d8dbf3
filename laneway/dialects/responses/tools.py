"""The Responses API's tools, as chat function tools every lane can call, and back.

The Responses API has tool kinds the chat format lacks. Each is decided here, once:

- ``function``: chat's function tool (the Responses shape is flat: ``name``, ``parameters`` and
  ``strict`` beside ``type``; chat nests them under ``function``).
- ``namespace`` (Codex groups its sub-agent tools so): each function in it becomes a chat
  function named ``<namespace>__<name>``; a call of one comes back as a ``function_call`` with
  its ``namespace`` and own name again.
- ``custom`` (free-form input, e.g. Codex's ``apply_patch``): a function taking one string,
  ``input``, with the tool's grammar (if any) in its description; a call comes back as a
  ``custom_tool_call`` whose ``input`` is that string.
- ``local_shell`` (Codex's shell for the codex models): a function taking ``command`` (argv) and
  the optional ``working_directory``, ``timeout_ms`` and ``env``; a call comes back as a
  ``local_shell_call`` with an ``exec`` action.
- ``web_search`` and its dated variants: dropped. No lane can search the web, and Codex sends
  the tool on every request (with ``external_web_access: false``); refusing it would refuse
  Codex. The model simply does not see it, and the response says so (``x-laneway-ignored-tools``).
- Every other hosted tool (``file_search``, ``code_interpreter``, ``computer_use_preview``,
  ``image_generation``, ``mcp``, ...): a 400 naming the tool, as nothing here can run it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from laneway.errors import InvalidRequest

NAMESPACE_SEPARATOR = "__"
IGNORED = frozenset(
    {"web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11"}
)
LOCAL_SHELL = "local_shell"
_SHELL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "command": {"type": "array", "items": {"type": "string"}, "description": "The argv to run."},
        "working_directory": {"type": "string", "description": "The directory to run it in."},
        "timeout_ms": {"type": "integer", "description": "How long it may run, in milliseconds."},
        "env": {"type": "object", "description": "Environment variables to set."},
    },
    "required": ["command"],
}


@dataclass(frozen=True, slots=True)
class Tool:
    """One chat function and what it stands for: ``kind`` (function, custom, local_shell), its
    Responses ``name`` and, for a function of a namespace, that ``namespace``."""

    kind: str
    name: str
    namespace: str | None = None


@dataclass(slots=True)
class Tools:
    """A request's tools: the chat ``functions`` sent on, what each chat name stands for
    (``by_chat_name``), and the tool types dropped (``ignored``)."""

    functions: list[dict[str, Any]] = field(default_factory=list)
    by_chat_name: dict[str, Tool] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def tool(self, chat_name: str) -> Tool:
        return self.by_chat_name.get(chat_name) or Tool("function", chat_name)

    def chat_name(self, kind: str, name: str, namespace: str | None = None) -> str:
        """The chat function name of a Responses call (for the items of earlier turns)."""
        if kind == LOCAL_SHELL:
            return LOCAL_SHELL
        return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name

    def add(self, chat_name: str, tool: Tool, function: dict[str, Any]) -> None:
        if chat_name in self.by_chat_name:
            raise InvalidRequest(f"Duplicate tool name: '{chat_name}'", param="tools")
        self.by_chat_name[chat_name] = tool
        self.functions.append({"type": "function", "function": {"name": chat_name, **function}})


def _text(spec: Mapping[str, Any], key: str, where: str) -> str | None:
    value = spec.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"Invalid type for '{where}.{key}': expected a string.", param=f"{where}.{key}")
    return value


def _function(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    name = _text(spec, "name", where)
    if not name:
        raise InvalidRequest(f"Missing required parameter: '{where}.name'.", param=f"{where}.name")
    parameters = spec.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise InvalidRequest(
            f"Invalid type for '{where}.parameters': expected an object.", param=f"{where}.parameters"
        )
    out: dict[str, Any] = {"parameters": parameters}
    if description := _text(spec, "description", where):
        out["description"] = description
    if isinstance(spec.get("strict"), bool):
        out["strict"] = spec["strict"]
    return out


def _custom(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    description = _text(spec, "description", where) or ""
    form = spec.get("format")
    if isinstance(form, dict) and form.get("type") == "grammar":
        syntax, definition = form.get("syntax", "lark"), form.get("definition", "")
        description += f"\n\nThe input must follow this {syntax} grammar:\n{definition}"
    parameters = {
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The tool's free-form input."}},
        "required": ["input"],
    }
    return {
        "description": description.strip() or "A tool with free-form text input.",
        "parameters": parameters,
    }


def translate_tools(tools: Any) -> Tools:
    """The request's ``tools`` as chat functions; a 400 naming a tool no lane can run."""
    out = Tools()
    if tools is None:
        return out
    if not isinstance(tools, list):
        raise InvalidRequest("Invalid type for 'tools': expected an array.", param="tools")
    for i, spec in enumerate(tools):
        _one_tool(out, spec, f"tools[{i}]")
    return out


def _one_tool(out: Tools, spec: Any, where: str, namespace: str | None = None) -> None:
    if not isinstance(spec, dict):
        raise InvalidRequest(f"Invalid type for '{where}': expected an object.", param=where)
    kind = spec.get("type")
    if kind == "function":
        function = _function(spec, where)
        name = str(spec["name"])
        out.add(out.chat_name("function", name, namespace), Tool("function", name, namespace), function)
    elif kind == "namespace" and namespace is None:
        space = _text(spec, "name", where)
        nested = spec.get("tools")
        if not space or not isinstance(nested, list):
            raise InvalidRequest(f"'{where}' needs a name and a list of tools.", param=where)
        for j, inner in enumerate(nested):
            _one_tool(out, inner, f"{where}.tools[{j}]", space)
    elif kind == "custom":
        custom = _text(spec, "name", where)
        if not custom:
            raise InvalidRequest(f"Missing required parameter: '{where}.name'.", param=f"{where}.name")
        name = custom
        out.add(
            out.chat_name("custom", name, namespace), Tool("custom", name, namespace), _custom(spec, where)
        )
    elif kind == LOCAL_SHELL:
        function = {"description": "Run a command on the user's machine.", "parameters": _SHELL_PARAMETERS}
        out.add(LOCAL_SHELL, Tool(LOCAL_SHELL, LOCAL_SHELL), function)
    elif kind in IGNORED:
        out.ignored.append(str(kind))
    else:
        raise InvalidRequest(
            f"The tool type '{kind}' ({where}) is a hosted tool laneway's lanes cannot run; "
            "send function, custom or local_shell tools",
            param=f"{where}.type",
        )


def translate_tool_choice(choice: Any, tools: Tools) -> Any:
    """Responses ``tool_choice`` → chat's (None: leave it out). ``allowed_tools`` narrows the
    functions sent to those it lists."""
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if not isinstance(choice, dict):
        raise InvalidRequest("Invalid value for 'tool_choice'.", param="tool_choice")
    kind = choice.get("type")
    if kind in ("function", "custom") and isinstance(choice.get("name"), str):
        name = tools.chat_name(kind, choice["name"], choice.get("namespace"))
        if name not in tools.by_chat_name:
            raise InvalidRequest(
                f"tool_choice names '{choice['name']}', which is not in tools", param="tool_choice"
            )
        return {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools" and isinstance(choice.get("tools"), list):
        allowed = {
            tools.chat_name(str(t.get("type")), str(t.get("name", LOCAL_SHELL)), t.get("namespace"))
            for t in choice["tools"]
            if isinstance(t, dict)
        }
        tools.functions = [f for f in tools.functions if f["function"]["name"] in allowed]
        mode = choice.get("mode", "auto")
        return mode if mode in ("auto", "required") else "auto"
    raise InvalidRequest(
        f"tool_choice of type '{kind}' cannot be served by laneway's lanes", param="tool_choice"
    )


def call_item(tool: Tool, call_id: str, arguments: str, item_id: str, status: str) -> dict[str, Any]:
    """A chat tool call as the Responses output item its tool stands for."""
    if tool.kind == "custom":
        return {
            "type": "custom_tool_call",
            "id": item_id,
            "call_id": call_id,
            "name": tool.name,
            "input": _custom_input(arguments),
            "status": status,
        }
    if tool.kind == LOCAL_SHELL:
        action = {"type": "exec", **_object(arguments)}
        action.setdefault("command", [])
        action.setdefault("env", {})
        return {
            "type": "local_shell_call",
            "id": item_id,
            "call_id": call_id,
            "action": action,
            "status": status,
        }
    item = {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": tool.name,
        "arguments": arguments,
        "status": status,
    }
    if tool.namespace:
        item["namespace"] = tool.namespace
    return item


def _object(arguments: str) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _custom_input(arguments: str) -> str:
    value = _object(arguments).get("input")
    if isinstance(value, str):
        return value
    return arguments  # a model that answered the string itself rather than {"input": ...}
