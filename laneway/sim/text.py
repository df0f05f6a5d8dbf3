"""What the sim "generates": deterministic text, token counts, tool calls and embeddings.

Everything here is a pure function of the request, so a test can predict every byte. A token is
a whitespace-separated word with its leading whitespace; joining the tokens gives the text back.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from laneway.sim.schema_fill import fill, json_text

# "stop": the reply ended by itself; "length": cut by max_tokens; "stop_sequence": cut by a stop
# string; "tool_calls": the reply is a tool call. Each wire module maps these to its own words.
Finish = Literal["stop", "length", "stop_sequence", "tool_calls"]

_TOKEN = re.compile(r"\s*\S+")
_ECHO_WORDS = 12
_TOOL_RESULT_WORDS = 64
_THINKING = "Let me think about what was asked before I answer."


def split_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def count_words(text: str) -> int:
    return len(text.split())


@dataclass(slots=True)
class ToolSpec:
    name: str
    schema: dict[str, Any]


@dataclass(slots=True)
class Prompt:
    """The family-neutral facts about a request that decide the answer."""

    words: int = 0
    last_user_text: str = ""
    images: int = 0
    tool_result: str | None = None  # the content of the last message, when it is a tool result
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: str | None = None  # None = auto, "none", "required", or the name of one tool
    max_tokens: int | None = None
    stops: list[str] = field(default_factory=list)
    thinking: bool = False
    output_schema: dict[str, Any] | None = None  # a JSON answer asked for: the schema it fits ({}: any)

    @property
    def prompt_tokens(self) -> int:
        return max(1, self.words)


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return orjson.dumps(self.arguments).decode()

    def argument_pieces(self, size: int = 8) -> list[str]:
        """The arguments JSON in small pieces, as a model streams it."""
        raw = self.arguments_json
        return [raw[i : i + size] for i in range(0, len(raw), size)]


@dataclass(slots=True)
class Answer:
    tokens: list[str]
    finish: Finish
    prompt_tokens: int
    stop_sequence: str | None = None
    tool_call: ToolCall | None = None
    thinking: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def thinking_text(self) -> str:
        return "".join(self.thinking)

    @property
    def completion_tokens(self) -> int:
        n = len(self.tokens) + len(self.thinking)
        if self.tool_call is not None:
            n += len(split_tokens(f"{self.tool_call.name} {self.tool_call.arguments_json}"))
        return n


def compose_reply(model: str, prompt: Prompt) -> str:
    """The default reply: names the model, the tool result, the images and echoes the user."""
    parts = [f"Hello from {model}."]
    if prompt.tool_result is not None:
        parts.append("The tool said: " + " ".join(prompt.tool_result.split()[:_TOOL_RESULT_WORDS]))
    if prompt.images:
        parts.append(f"I received {prompt.images} image{'s' if prompt.images != 1 else ''}.")
    echo = prompt.last_user_text.split()[:_ECHO_WORDS]
    if echo:
        parts.append("You said: " + " ".join(echo))
    return " ".join(parts)


def answer(model: str, prompt: Prompt, reply: str | None = None, tool_calls: str = "auto") -> Answer:
    """The sim's answer to ``prompt``: a tool call when tools call for one, else text.

    ``tool_calls`` "forced" calls a tool only when the tool choice forces one (SimOptions.tool_calls).
    """
    thinking = split_tokens(_THINKING) if prompt.thinking else []
    tool = _chosen_tool(prompt, forced_only=tool_calls == "forced")
    if tool is not None:
        call = ToolCall(tool.name, _arguments_for(tool.schema))
        return Answer([], "tool_calls", prompt.prompt_tokens, tool_call=call, thinking=thinking)
    if reply is None and prompt.output_schema is not None:
        reply = json_text(prompt.output_schema)
    text = compose_reply(model, prompt) if reply is None else reply
    finish: Finish = "stop"
    matched: str | None = None
    cut = len(text)
    for stop in prompt.stops:
        at = text.find(stop) if stop else -1
        if 0 <= at < cut:
            cut, matched = at, stop
    if matched is not None:
        text, finish = text[:cut], "stop_sequence"
    tokens = split_tokens(text)
    if prompt.max_tokens is not None and prompt.max_tokens < len(tokens):
        tokens, finish, matched = tokens[: max(0, prompt.max_tokens)], "length", None
    return Answer(tokens, finish, prompt.prompt_tokens, stop_sequence=matched, thinking=thinking)


def _chosen_tool(prompt: Prompt, *, forced_only: bool = False) -> ToolSpec | None:
    if not prompt.tools or prompt.tool_choice == "none" or prompt.tool_result is not None:
        return None
    if forced_only and prompt.tool_choice is None:  # None is "auto": the model may answer text
        return None
    for tool in prompt.tools:
        if tool.name == prompt.tool_choice:
            return tool
    return prompt.tools[0]


def _arguments_for(schema: dict[str, Any]) -> dict[str, Any]:
    """Arguments that fit the tool's schema (``schema_fill``): its required properties filled."""
    arguments = fill(schema)
    return arguments if isinstance(arguments, dict) else {}


def embedding(text: str, dim: int) -> list[float]:
    """A unit vector of ``dim`` float32 values that depends only on ``text``.

    Values are rounded to float32 so that the float and the base64 encodings carry the same numbers.
    """
    raw = hashlib.shake_128(text.encode()).digest(2 * dim)
    values = [v / 32767.5 - 1.0 for v in struct.unpack(f"<{dim}H", raw)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *(v / norm for v in values))))


def embedding_base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
