"""OpenAI format ⇄ Anthropic's Messages API, as pure functions and a stream translator that
need no server.

Choices made here, and why:

- System and developer messages, wherever they stand, are joined into the top-level ``system``.
- Tool results become ``tool_result`` blocks in a user turn; consecutive turns of one role are
  merged (tool results and the user text after them form one user turn, results first).
- ``max_tokens`` is required by Anthropic: 4096 when the client gives none.
- Reasoning effort (the client's ``reasoning_effort``, else the route's) turns on extended
  thinking with a budget of 1024 / 4096 / 16384 tokens, raising ``max_tokens`` above the budget
  when needed. Anthropic refuses sampling overrides with thinking on, so ``temperature`` and
  ``top_k`` are then dropped (and ``top_p`` below 0.95). It also refuses a forced tool with
  thinking: a client asking for both gets a 422; a route's effort yields to the forced tool.
  The same holds for a model without extended thinking (Claude 3 but 3.7).
- Thinking comes back as ``reasoning_content`` (text) plus ``thinking_blocks`` (the blocks with
  their signatures). A client that sends ``thinking_blocks`` back on an assistant message gets
  them replayed, which Anthropic requires for tool use with thinking (a tool-use turn sent back
  without them continues with thinking off rather than failing).
- No JSON mode (``response_format``), logprobs, penalties, ``n > 1`` or text completions: 422.
  ``seed`` is ignored (OpenAI only promises best effort for it too).
- Usage (``usage_of``, ``MessageStream.usage``): prompt tokens are input + cache creation + cache
  read tokens (OpenAI's prompt count includes cached ones). A stream knows its prompt tokens from
  ``message_start`` and its final output tokens from ``message_delta``, just before the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
from laneway.providers.openai_format import (
    ChunkWriter,
    assistant_message,
    chat_completion,
    content_parts,
    effort_of,
    function_tools,
    image_url_of,
    include_usage,
    int_field,
    max_tokens_of,
    messages_of,
    number_of,
    parse_data_url,
    protocol_guard,
    refuse_common,
    stop_of,
    str_field,
    text_of,
    tool_call,
    tool_calls_of,
    tool_choice_of,
    usage,
)

FAMILY = "anthropic"
DEFAULT_MAX_TOKENS = 4096
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
CONTEXT_LENGTH = 200_000  # every Claude model's window, when /v1/models does not say

# Anthropic error types (in an error body or a stream's ``error`` event) → HTTP status.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# --- requests -----------------------------------------------------------------------------------


def _image_block(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    url = image_url_of(part)
    inline = parse_data_url(url)
    if inline is not None:
        media_type, data = inline
        if media_type not in IMAGE_TYPES:
            raise UnsupportedParameter(
                f"{where}: Anthropic takes jpeg, png, gif or webp images", param="messages"
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(f"{where}: an image url must be http(s) or a data: URL", param="messages")


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    blocks = []
    for part in content_parts(content, where):
        kind = part["type"]
        if kind == "text":
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image_block(part, where))
        else:
            raise UnsupportedParameter(
                f"{where}: '{kind}' content is not supported by Anthropic", param="messages"
            )
    return blocks


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    thinking = message.get("thinking_blocks")
    if isinstance(thinking, list):
        blocks.extend(
            b for b in thinking if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking")
        )
    if text := text_of(message.get("content"), where):
        blocks.append({"type": "text", "text": text})
    for call_id, name, arguments in tool_calls_of(message, where):
        if not call_id:
            raise InvalidRequest(f"{where}: each tool call needs an id", param="messages")
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
    return blocks


def convert_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """OpenAI chat messages → (Anthropic ``system``, Anthropic ``messages``)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []

    def append(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        role, where = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            if text := text_of(message.get("content"), where):
                system.append(text)
        elif role == "user":
            blocks = _user_blocks(message.get("content"), where)
            if not blocks:
                raise InvalidRequest(f"{where}: a user message needs content", param="messages")
            append("user", blocks)
        elif role == "assistant":
            # An empty assistant turn (no text, no tool calls) is dropped: Anthropic refuses it.
            if blocks := _assistant_blocks(message, where):
                append("assistant", blocks)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(f"{where}: a tool message needs tool_call_id", param="messages")
            result = {
                "type": "tool_result",
                "tool_use_id": call_id,
                "content": text_of(message.get("content"), where),
            }
            append("user", [result])
        else:
            raise InvalidRequest(f"{where}: unknown role '{role}'", param="messages")
    if not out:
        raise InvalidRequest("messages must hold at least one user or assistant message", param="messages")
    return "\n\n".join(system), out


def _refuse(body: Mapping[str, Any]) -> None:
    refuse_common(body, FAMILY)
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") not in (None, "text"):
        raise UnsupportedParameter("the anthropic family has no JSON mode", param="response_format")
    for key in ("frequency_penalty", "presence_penalty"):
        if number_of(body, key):
            raise UnsupportedParameter(f"the anthropic family has no {key}", param=key)


def _tool_choice(choice: str | None, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is not False:
        return None
    if choice == "none":
        return {"type": "none"}
    if choice in (None, "auto"):
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    else:
        out = {"type": "tool", "name": choice}
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def _unsigned_tool_turn(messages: list[dict[str, Any]]) -> bool:
    """Whether the last assistant turn called tools without the thinking block that preceded them."""
    last = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), None)
    if not last or not any(b["type"] == "tool_use" for b in last):
        return False
    return last[0]["type"] not in ("thinking", "redacted_thinking")


def messages_request(call: Call, *, stream: bool) -> dict[str, Any]:
    """An OpenAI chat request → a ``/v1/messages`` body."""
    body = call.body
    _refuse(body)
    system, messages = convert_messages(messages_of(body))
    max_tokens = max_tokens_of(body) or DEFAULT_MAX_TOKENS
    out: dict[str, Any] = {"model": call.model, "max_tokens": max_tokens, "messages": messages}
    if system:
        out["system"] = system
    if stream:
        out["stream"] = True
    for key in ("temperature", "top_p", "top_k"):
        value = number_of(body, key)
        if value is not None:
            out[key] = value
    if stop := stop_of(body):
        out["stop_sequences"] = stop
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}

    tools = function_tools(body)
    choice = tool_choice_of(body)
    if tools:
        out["tools"] = [
            {
                "name": f["name"],
                **({"description": f["description"]} if isinstance(f.get("description"), str) else {}),
                "input_schema": f.get("parameters") or {"type": "object", "properties": {}},
            }
            for f in tools
        ]
        if (tool_choice := _tool_choice(choice, body.get("parallel_tool_calls"))) is not None:
            out["tool_choice"] = tool_choice
    forced = bool(tools) and choice not in (None, "auto", "none")

    effort = effort_of(body, call.effort)
    explicit = body.get("reasoning_effort") not in (None, "none")
    if effort is not None and not can_think(call.model):
        if explicit:
            raise UnsupportedParameter(f"{call.model} has no extended thinking", param="reasoning_effort")
        effort = None  # a route's effort only applies to models that can think
    if effort is not None and forced:
        if explicit:
            raise UnsupportedParameter(
                "Anthropic cannot force a tool call while thinking; drop reasoning_effort or tool_choice",
                param="tool_choice",
            )
        effort = None  # the route's effort yields to the client's explicit tool choice
    if effort is not None and _unsigned_tool_turn(messages):
        # With thinking on, Anthropic wants the assistant's tool-use turn to begin with its
        # signed thinking block; a client that did not send it back continues without thinking.
        effort = None
    if effort is not None:
        budget = THINKING_BUDGETS[effort]
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if max_tokens <= budget:
            out["max_tokens"] = budget + max_tokens
        out.pop("temperature", None)
        out.pop("top_k", None)
        if out.get("top_p", 1) < 0.95:
            out.pop("top_p")
    return out


# --- answers ------------------------------------------------------------------------------------


def status_error(error: Any, backend: str) -> UpstreamStatusError:
    """An Anthropic ``{"type": "error", "error": {"type", "message"}}`` as a status error."""
    kind = error.get("type") if isinstance(error, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    return UpstreamStatusError(
        f"backend '{backend}' reported {kind or 'an error'}: {message or error}",
        backend=backend,
        upstream_status=ERROR_STATUS.get(str(kind), 500),
    )


def _usage(data: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt tokens, cached prompt tokens). OpenAI's prompt count includes cached tokens."""
    cached = int_field(data, "cache_read_input_tokens")
    return int_field(data, "input_tokens") + int_field(data, "cache_creation_input_tokens") + cached, cached


_PROMPT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def usage_of(data: Mapping[str, Any]) -> Usage | None:
    """The tokens a ``/v1/messages`` answer reports (its ``usage``); None if it reports none.
    A count the answer leaves out stays None rather than becoming 0."""
    reported = data.get("usage")
    if not isinstance(reported, Mapping):
        return None
    prompt = _prompt_tokens(reported)
    completion = _reported(reported, "output_tokens")
    return None if prompt is None and completion is None else Usage(prompt, completion)


def _prompt_tokens(data: Mapping[str, Any]) -> int | None:
    counts = [c for key in _PROMPT_KEYS if (c := _reported(data, key)) is not None]
    return sum(counts) if counts else None


def _reported(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(str(stop_reason), "stop")


def message_response(data: Mapping[str, Any], *, model: str, backend: str = "") -> dict[str, Any]:
    """A ``/v1/messages`` answer → an OpenAI ``chat.completion`` (the id is Anthropic's)."""
    if data.get("type") == "error":
        raise status_error(data.get("error"), backend)
    with protocol_guard(backend, "message"):
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        reasoning: list[str] = []
        thinking_blocks: list[dict[str, Any]] = []
        for block in data["content"]:
            kind = block["type"]
            if kind == "text":
                texts.append(str_field(block, "text"))
            elif kind == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                calls.append(tool_call(str_field(block, "id"), str_field(block, "name"), arguments))
            elif kind == "thinking":
                reasoning.append(str_field(block, "thinking"))
                thinking_blocks.append(
                    {
                        "type": "thinking",
                        "thinking": block["thinking"],
                        "signature": block.get("signature", ""),
                    }
                )
            elif kind == "redacted_thinking":
                thinking_blocks.append({"type": "redacted_thinking", "data": block["data"]})
            # server-tool blocks (web search...) have no OpenAI counterpart and are left out
        message = assistant_message("".join(texts), calls, reasoning="".join(reasoning) or None)
        if thinking_blocks:
            message["thinking_blocks"] = thinking_blocks
        prompt, cached = _usage(data["usage"])
        return chat_completion(
            id=str_field(data, "id"),
            model=data.get("model") or model,
            message=message,
            finish_reason=finish_reason(data.get("stop_reason")),
            usage=usage(prompt, int_field(data["usage"], "output_tokens"), cached_tokens=cached),
        )


# --- streams ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Block:
    kind: str
    tool_index: int = -1
    has_arguments: bool = False
    thinking: str = ""
    signature: str = ""


class MessageStream:
    """Anthropic stream events → ``chat.completion.chunk`` objects.

    ``message_start`` gives the id and model (the role chunk); content blocks become content,
    ``reasoning_content`` and tool-call deltas (tool calls are numbered in order, whatever their
    block index); ``message_delta`` carries the stop reason and output tokens; ``message_stop``
    ends it (finish chunk, then usage if asked). An ``error`` event raises; a body that ends
    before ``message_stop`` raises StreamBroken (``close``).
    """

    def __init__(self, *, model: str, include_usage: bool, backend: str = "") -> None:
        self.model = model
        self.include_usage = include_usage
        self.backend = backend
        self.writer: ChunkWriter | None = None
        self.blocks: dict[int, _Block] = {}
        self.tool_calls = 0
        self.stop_reason: Any = None
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.output_tokens = 0
        self._counted: set[str] = set()  # which counts the upstream reported at all
        self.done = False

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "error":
            raise status_error(event.get("error"), self.backend)
        if kind == "ping":
            return []
        if self.done:
            raise UpstreamProtocolError(
                f"backend '{self.backend}' sent events after message_stop", backend=self.backend
            )
        with protocol_guard(self.backend, f"'{kind}' event"):
            if kind == "message_start":
                message = event["message"]
                self.writer = ChunkWriter(
                    id=str_field(message, "id"),
                    model=message.get("model") or self.model,
                    include_usage=self.include_usage,
                )
                self._take_usage(message.get("usage") or {})
                return [self.writer.role()]
            if self.writer is None:
                raise ValueError("an event came before message_start")
            if kind == "content_block_start":
                return self._block_start(self.writer, int(event["index"]), event["content_block"])
            if kind == "content_block_delta":
                return self._block_delta(self.writer, self.blocks[int(event["index"])], event["delta"])
            if kind == "content_block_stop":
                return self._block_stop(self.writer, self.blocks[int(event["index"])])
            if kind == "message_delta":
                self.stop_reason = event["delta"].get("stop_reason") or self.stop_reason
                self._take_usage(event.get("usage") or {})
                return []
            if kind == "message_stop":
                self.done = True
                total = usage(self.prompt_tokens, self.output_tokens, cached_tokens=self.cached_tokens)
                return self.writer.end(finish_reason(self.stop_reason), total)
        return []  # Anthropic may add event types; unknown ones are skipped, as its SDKs do

    def close(self) -> None:
        """Called when the upstream body ended; a stream without ``message_stop`` was cut off."""
        if not self.done:
            raise StreamBroken(
                f"backend '{self.backend}' ended its stream before message_stop", backend=self.backend
            )

    @property
    def usage(self) -> Usage | None:
        """The tokens reported so far: the prompt from ``message_start``, the output as of the
        last ``message_delta`` (final once the stream ended). None if nothing was reported."""
        if not self._counted:
            return None
        return Usage(
            self.prompt_tokens if "prompt" in self._counted else None,
            self.output_tokens if "output" in self._counted else None,
        )

    def _take_usage(self, data: Mapping[str, Any]) -> None:
        # message_start has the input count; message_delta the (cumulative) output count and,
        # in newer API versions, the input count again. Later values win.
        if any(k in data for k in _PROMPT_KEYS):
            self.prompt_tokens, self.cached_tokens = _usage(data)
            self._counted.add("prompt")
        if "output_tokens" in data:
            self.output_tokens = int_field(data, "output_tokens")
            self._counted.add("output")

    def _block_start(self, writer: ChunkWriter, index: int, block: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = block["type"]
        state = self.blocks[index] = _Block(kind)
        if kind == "text" and block.get("text"):
            return [writer.content(str_field(block, "text"))]
        if kind == "tool_use":
            state.tool_index = self.tool_calls
            self.tool_calls += 1
            return [
                writer.tool_call_start(state.tool_index, str_field(block, "id"), str_field(block, "name"))
            ]
        if kind == "thinking" and block.get("thinking"):
            state.thinking = str_field(block, "thinking")
            return [writer.reasoning(state.thinking)]
        if kind == "redacted_thinking":
            return [writer.chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": block["data"]}]})]
        return []

    def _block_delta(
        self, writer: ChunkWriter, state: _Block, delta: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        kind = delta["type"]
        if kind == "text_delta":
            return [writer.content(str_field(delta, "text"))] if delta["text"] else []
        if kind == "input_json_delta" and state.kind == "tool_use":
            fragment = str_field(delta, "partial_json")
            if not fragment:
                return []
            state.has_arguments = True
            return [writer.tool_call_arguments(state.tool_index, fragment)]
        if kind == "thinking_delta":
            state.thinking += str_field(delta, "thinking")
            return [writer.reasoning(str_field(delta, "thinking"))]
        if kind == "signature_delta":
            state.signature += str_field(delta, "signature")
        return []

    def _block_stop(self, writer: ChunkWriter, state: _Block) -> list[dict[str, Any]]:
        if state.kind == "tool_use" and not state.has_arguments:
            return [writer.tool_call_arguments(state.tool_index, "{}")]
        if state.kind == "thinking":
            block = {"type": "thinking", "thinking": state.thinking, "signature": state.signature}
            return [writer.chunk({"thinking_blocks": [block]})]
        return []


def message_stream(call: Call, backend: str = "") -> MessageStream:
    return MessageStream(model=call.model, include_usage=include_usage(call.body), backend=backend)


# --- discovery ----------------------------------------------------------------------------------


def can_think(model: str) -> bool:
    """Extended thinking: every Claude model but the Claude 3 generation (3.7 excepted)."""
    return not model.startswith("claude-3-") or model.startswith("claude-3-7")


def _supported(capabilities: Mapping[str, Any], name: str) -> bool | None:
    """``capabilities[name].supported`` when the answer has it, else None (not said)."""
    entry = capabilities.get(name)
    value = entry.get("supported") if isinstance(entry, Mapping) else None
    return value if isinstance(value, bool) else None


def model_info(entry: Mapping[str, Any]) -> ModelInfo | None:
    """One ``/v1/models`` entry. Every Claude model chats and takes tools. ``max_input_tokens``
    is its context window and ``capabilities`` (``image_input``, ``thinking``) what it accepts;
    an older answer without them falls back to what every Claude model of its generation does."""
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id:
        return None
    caps = {"chat", "tools"}
    listed = entry.get("capabilities")
    said = listed if isinstance(listed, Mapping) else {}
    if _supported(said, "image_input") is not False:
        caps.add("vision")
    thinks = _supported(said, "thinking")
    if thinks or (thinks is None and can_think(model_id)):
        caps.add("reasoning")
    context = entry.get("max_input_tokens")
    if not isinstance(context, int) or isinstance(context, bool) or context <= 0:
        context = CONTEXT_LENGTH
    return ModelInfo(
        id=model_id, types=frozenset({"chat"}), capabilities=frozenset(caps), context_length=context
    )


def model_page(data: Mapping[str, Any], backend: str = "") -> tuple[list[ModelInfo], str | None]:
    """One page of ``/v1/models``: its models and the ``after_id`` of the next page (None at the end)."""
    with protocol_guard(backend, "/v1/models answer"):
        entries = data["data"]
        if not isinstance(entries, list):
            raise TypeError("'data' is not a list")
        models = [info for e in entries if isinstance(e, Mapping) and (info := model_info(e)) is not None]
        last = data.get("last_id")
        more = data.get("has_more") is True and isinstance(last, str) and bool(last)
        return models, last if more else None
