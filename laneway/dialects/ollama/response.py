"""Whole OpenAI answers → Ollama's answers, as pure functions: a chat completion (or a text
completion, for a raw generate) → an ``/api/chat`` or ``/api/generate`` answer; an embeddings list →
an ``/api/embed`` or ``/api/embeddings`` answer; and the answer to a load request.

Ollama's answers carry timings in nanoseconds. laneway measures what it can see: the whole
request (``total_duration``) and, for a stream, the wait for the first token
(``prompt_eval_duration``; the rest is ``eval_duration``). Loading happens on the backend, out of
sight, and is reported as 0. The counts are the tokens the upstream reported, left out when it
reported none (as Ollama leaves out ``prompt_eval_count`` for a prompt it had cached).

Malformed answers raise ``KeyError``/``TypeError``/``ValueError``: the caller reads them inside
``providers.openai_format.protocol_guard``, which names the backend.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

NANOS = 1_000_000_000
ZERO_DURATIONS = frozenset({"0", "0s", "0m", "0h"})  # keep_alive values that mean "unload now"


def rfc3339_nano(epoch: float) -> str:
    """A UTC time as Go's RFC3339Nano writes it (Ollama's ``created_at``): up to nine fraction
    digits, trailing zeros cut, no fraction at all on a whole second."""
    seconds = math.floor(epoch)
    fraction = min(NANOS - 1, round((epoch - seconds) * NANOS))  # epoch * NANOS would lose digits
    moment = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{moment}.{digits}Z" if digits else f"{moment}Z"


@dataclass(slots=True)
class Timing:
    """When a request began and (for a stream) when its first token came, in monotonic seconds."""

    started: float
    first_token: float | None = None

    def durations(self, now: float) -> dict[str, int]:
        total = max(0, round((now - self.started) * NANOS))
        first = self.first_token
        prompt = 0 if first is None else min(total, max(0, round((first - self.started) * NANOS)))
        return {
            "total_duration": total,
            "load_duration": 0,
            "prompt_eval_duration": prompt,
            "eval_duration": total - prompt,
        }


def done_reason(finish_reason: Any) -> str:
    """OpenAI's finish reason in Ollama's words: ``length`` when cut short, else ``stop`` (Ollama
    says ``stop`` after a tool call too)."""
    return "length" if finish_reason == "length" else "stop"


def counts(usage: Any) -> dict[str, int]:
    """``prompt_eval_count`` and ``eval_count`` from an OpenAI ``usage`` (each only if reported)."""
    out: dict[str, int] = {}
    if isinstance(usage, Mapping):
        for ours, theirs in (("prompt_eval_count", "prompt_tokens"), ("eval_count", "completion_tokens")):
            value = usage.get(theirs)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                out[ours] = value
    return out


def final_fields(reason: str, timing: dict[str, int], usage: Any) -> dict[str, Any]:
    """What closes an answer (and a stream's ``done`` line), in Ollama's order."""
    numbers = counts(usage)
    out: dict[str, Any] = {"done_reason": reason, "done": True}
    out["total_duration"], out["load_duration"] = timing["total_duration"], timing["load_duration"]
    if "prompt_eval_count" in numbers:
        out["prompt_eval_count"] = numbers["prompt_eval_count"]
    out["prompt_eval_duration"] = timing["prompt_eval_duration"]
    if "eval_count" in numbers:
        out["eval_count"] = numbers["eval_count"]
    out["eval_duration"] = timing["eval_duration"]
    return out


def tool_arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI's arguments (a JSON string) as the object Ollama sends."""
    if isinstance(arguments, dict):
        return arguments
    value = orjson.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
    if not isinstance(value, dict):
        raise ValueError("tool call arguments are not a JSON object")
    return value


def tool_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls → Ollama's (``{"id", "function": {"index", "name", "arguments": {...}}}``)."""
    out = []
    for index, call in enumerate(calls or []):
        function = call["function"]
        entry: dict[str, Any] = {
            "function": {
                "index": index,
                "name": function["name"],
                "arguments": tool_arguments(function.get("arguments")),
            }
        }
        if isinstance(call.get("id"), str):
            entry = {"id": call["id"], **entry}
        out.append(entry)
    return out


def thinking_of(message: Mapping[str, Any]) -> str:
    """The reasoning an OpenAI message or delta carries (``reasoning_content``; some servers say
    ``reasoning``)."""
    value = message.get("reasoning_content") or message.get("reasoning")
    return value if isinstance(value, str) else ""


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    out: dict[str, Any] = {"role": "assistant", "content": content if isinstance(content, str) else ""}
    if thinking := thinking_of(message):
        out["thinking"] = thinking
    if calls := tool_calls(message.get("tool_calls")):
        out["tool_calls"] = calls
    return out


def chat_response(
    completion: Mapping[str, Any], *, model: str, at: str, timing: dict[str, int]
) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` → an ``/api/chat`` answer (``model``: the name the client asked for)."""
    choice = completion["choices"][0]
    head = {"model": model, "created_at": at, "message": _message(choice["message"])}
    return {**head, **final_fields(done_reason(choice.get("finish_reason")), timing, completion.get("usage"))}


def generate_response(
    completion: Mapping[str, Any], *, model: str, at: str, timing: dict[str, int]
) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` (or a ``text_completion``, for a raw generate) → an
    ``/api/generate`` answer."""
    choice = completion["choices"][0]
    out: dict[str, Any] = {"model": model, "created_at": at}
    if "message" in choice:
        message = choice["message"]
        content = message.get("content")
        out["response"] = content if isinstance(content, str) else ""
        if thinking := thinking_of(message):
            out["thinking"] = thinking
    else:
        text = choice["text"]
        if not isinstance(text, str):
            raise TypeError("'text' is not a string")
        out["response"] = text
    return {**out, **final_fields(done_reason(choice.get("finish_reason")), timing, completion.get("usage"))}


def vectors(answer: Mapping[str, Any]) -> list[list[float]]:
    """The vectors of an OpenAI embeddings list, in input order (base64 ones decoded)."""
    data = sorted(answer["data"], key=lambda item: item.get("index", 0))
    out = []
    for item in data:
        vector = item["embedding"]
        if isinstance(vector, str):
            raw = base64.b64decode(vector)
            vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        if not isinstance(vector, list) or not all(isinstance(x, int | float) for x in vector):
            raise TypeError("an embedding is not a list of numbers")
        out.append(vector)
    return out


def embed_response(answer: Mapping[str, Any], *, model: str, timing: dict[str, int]) -> dict[str, Any]:
    """An OpenAI embeddings list → an ``/api/embed`` answer."""
    out: dict[str, Any] = {"model": model, "embeddings": vectors(answer)}
    out["total_duration"], out["load_duration"] = timing["total_duration"], timing["load_duration"]
    prompt = counts(answer.get("usage")).get("prompt_eval_count")
    if prompt is not None:
        out["prompt_eval_count"] = prompt
    return out


def embeddings_response(answer: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI embeddings list → an ``/api/embeddings`` answer (one vector)."""
    found = vectors(answer)
    return {"embedding": found[0] if found else []}


def load_response(path: str, *, model: str, at: str, keep_alive: Any = None) -> dict[str, Any]:
    """The answer to a load request (no messages, no prompt): Ollama's, ``done_reason: load``, or
    ``unload`` when ``keep_alive`` is zero (Ollama's way to ask for a model to be unloaded).
    laneway's backends keep their models as they see fit; the answer only says it was heard."""
    if path == "embeddings":
        return {"embedding": []}
    head: dict[str, Any] = {"model": model, "created_at": at}
    if path == "chat":
        head["message"] = {"role": "assistant", "content": ""}
    else:
        head["response"] = ""
    unload = keep_alive == 0 or (isinstance(keep_alive, str) and keep_alive.strip() in ZERO_DURATIONS)
    return {**head, "done_reason": "unload" if unload else "load", "done": True}
