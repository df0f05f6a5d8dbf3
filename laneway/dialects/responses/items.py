"""A Responses ``input`` (a string or a list of items) as OpenAI chat messages.

- ``message`` items (or ``{role, content}`` without a type) keep their role; ``input_text`` and
  ``output_text`` parts become text, ``input_image`` an ``image_url`` part. ``input_file`` and
  images by ``file_id`` need OpenAI's file store: a 400.
- ``function_call``, ``custom_tool_call`` and ``local_shell_call`` items become tool calls of an
  assistant message (consecutive calls share one, as a chat answer has them), named as
  ``tools.Tools`` names them; their ``*_output`` items become ``tool`` messages.
- ``reasoning`` items are carried to the assistant message that follows them: the reasoning
  text as ``reasoning_content``, and the thinking blocks (with their signatures) that laneway
  put in ``encrypted_content`` as ``thinking_blocks``, which an Anthropic lane replays (it
  needs them for tool use with thinking). Another server's ``encrypted_content`` means nothing
  here and is dropped: Codex sends back what it was given, so that is always laneway's own.
- ``item_reference`` and every other item type: a 400 naming the item.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import orjson

from laneway.dialects.responses.tools import LOCAL_SHELL, Tools
from laneway.errors import InvalidRequest

_REASONING_PREFIX = "laneway.v1:"  # encrypted_content laneway wrote (thinking blocks, not a secret)
_OUTPUTS = ("function_call_output", "custom_tool_call_output", "local_shell_call_output")


def encode_reasoning(blocks: list[dict[str, Any]]) -> str:
    """The thinking blocks of an answer as a reasoning item's ``encrypted_content``."""
    return _REASONING_PREFIX + base64.urlsafe_b64encode(orjson.dumps(blocks)).decode("ascii")


def decode_reasoning(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, str) or not value.startswith(_REASONING_PREFIX):
        return []
    try:
        blocks = orjson.loads(base64.urlsafe_b64decode(value[len(_REASONING_PREFIX) :]))
    except (binascii.Error, ValueError):
        return []
    return [b for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else []


def input_messages(value: Any, tools: Tools) -> list[dict[str, Any]]:
    """The chat messages of a request's ``input``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise InvalidRequest(
            "Invalid type for 'input': expected a string or an array of items.", param="input"
        )
    builder = _Builder(tools)
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"Invalid type for 'input[{i}]': expected an object.", param=f"input[{i}]")
        builder.add(item, f"input[{i}]")
    return builder.finish()


class _Builder:
    def __init__(self, tools: Tools) -> None:
        self.tools = tools
        self.messages: list[dict[str, Any]] = []

    def finish(self) -> list[dict[str, Any]]:
        # A reasoning item nothing followed carries nothing a lane could use.
        return [m for m in self.messages if m["role"] != "assistant" or _has_turn(m)]

    def _assistant(self, *, for_calls: bool) -> dict[str, Any]:
        """The assistant message an item joins: the last one, while nothing came after it and
        it can take the item (calls join text; text joins only a message without calls)."""
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant" and (for_calls or not last.get("tool_calls")):
            return last
        message: dict[str, Any] = {"role": "assistant", "content": None}
        self.messages.append(message)
        return message

    def add(self, item: dict[str, Any], where: str) -> None:
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            self._message(item, where)
        elif kind in ("function_call", "custom_tool_call", "local_shell_call"):
            call_id, name, arguments = _call(item, str(kind), self.tools, where)
            message = self._assistant(for_calls=True)
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            message.setdefault("tool_calls", []).append(call)
        elif kind in _OUTPUTS:
            output_of = item.get("call_id")
            if not isinstance(output_of, str) or not output_of:
                raise InvalidRequest(
                    f"Missing required parameter: '{where}.call_id'.", param=f"{where}.call_id"
                )
            self.messages.append({"role": "tool", "tool_call_id": output_of, "content": _output(item, where)})
        elif kind == "reasoning":
            self._reasoning(item)
        else:
            raise InvalidRequest(
                f"Input items of type '{kind}' ({where}) are not supported by laneway", param=f"{where}.type"
            )

    def _message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise InvalidRequest(
                f"Invalid value for '{where}.role': expected user, system, developer or assistant.",
                param=f"{where}.role",
            )
        content = _content(item.get("content"), f"{where}.content", assistant=role == "assistant")
        if role != "assistant":
            self.messages.append({"role": role, "content": content})
            return
        message = self._assistant(for_calls=False)
        text = content if isinstance(content, str) else ""
        message["content"] = f"{message['content']}{text}" if message["content"] else text

    def _reasoning(self, item: dict[str, Any]) -> None:
        texts = [
            part["text"]
            for key in ("content", "summary")
            for part in (item.get(key) or [])
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        blocks = decode_reasoning(item.get("encrypted_content"))
        if not texts and not blocks:
            return
        message = self._assistant(for_calls=False)
        if message["content"] or message.get("tool_calls"):  # reasoning comes before what it led to
            message = {"role": "assistant", "content": None}
            self.messages.append(message)
        if texts:
            message["reasoning_content"] = (message.get("reasoning_content") or "") + "\n".join(texts)
        if blocks:
            message.setdefault("thinking_blocks", []).extend(blocks)


def _has_turn(message: Mapping[str, Any]) -> bool:
    return bool(message.get("content")) or bool(message.get("tool_calls"))


def _content(value: Any, where: str, *, assistant: bool) -> str | list[dict[str, Any]]:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise InvalidRequest(f"Invalid type for '{where}': expected a string or an array.", param=where)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(part, dict):
            raise InvalidRequest(f"Invalid type for '{at}': expected an object.", param=at)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and assistant:
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image" and not assistant:
            parts.append(_image(part, at))
        elif kind in ("input_file", "input_image", "input_audio"):
            raise InvalidRequest(f"'{at}': {kind} parts are not supported by laneway", param=f"{at}.type")
        else:
            raise InvalidRequest(f"Invalid content part type '{kind}' at '{at}'.", param=f"{at}.type")
    if assistant:
        return "".join(p["text"] for p in parts)
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise InvalidRequest(
            f"'{where}': give the image as image_url (a URL or a data URL); file_id needs OpenAI's files",
            param=f"{where}.image_url",
        )
    image: dict[str, Any] = {"url": url}
    if part.get("detail") in ("low", "high", "auto"):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _call(item: Mapping[str, Any], kind: str, tools: Tools, where: str) -> tuple[str, str, str]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"Missing required parameter: '{where}.call_id'.", param=f"{where}.call_id")
    if kind == "local_shell_call":
        action = item.get("action")
        arguments = {k: v for k, v in action.items() if k != "type"} if isinstance(action, dict) else {}
        return call_id, LOCAL_SHELL, orjson.dumps(arguments).decode()
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"Missing required parameter: '{where}.name'.", param=f"{where}.name")
    namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
    chat_name = tools.chat_name(kind.removesuffix("_call").removesuffix("_tool"), name, namespace)
    if kind == "custom_tool_call":
        text = item.get("input")
        return call_id, chat_name, orjson.dumps({"input": text if isinstance(text, str) else ""}).decode()
    given = item.get("arguments")
    if not isinstance(given, str):
        raise InvalidRequest(
            f"Invalid type for '{where}.arguments': expected a string.", param=f"{where}.arguments"
        )
    return call_id, chat_name, given


def _output(item: Mapping[str, Any], where: str) -> str:
    """A tool's output as the text of a ``tool`` message (chat tool messages hold text)."""
    output = item.get("output")
    if isinstance(output, str):
        return output
    if isinstance(output, dict):  # local_shell_call_output may send an object
        return orjson.dumps(output).decode()
    if isinstance(output, list):
        texts = []
        for part in output:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict):
                texts.append(f"[{part.get('type', 'content')} omitted]")
        return "\n".join(texts)
    raise InvalidRequest(
        f"Invalid type for '{where}.output': expected a string or an array.", param=f"{where}.output"
    )
