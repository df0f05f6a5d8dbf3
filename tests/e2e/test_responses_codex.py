"""Codex CLI's real request (captured from ``codex exec`` 0.169.0: ``store: false``, streamed,
developer messages, function tools, a ``namespace`` of tools, the hosted ``web_search``,
``include: ["reasoning.encrypted_content"]``, ``prompt_cache_key``, ``client_metadata``) replayed
through laneway to an Ollama lane and an Anthropic lane, and its next turn as Codex sends it:
the whole input again, the model's function call and its output appended."""

from __future__ import annotations

import json
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import ResponseStreamEvent

from laneway import sse
from tests.conftest import RunningGateway

CAPTURE = Path(__file__).with_name("captures") / "codex-0.169.0-responses.json"
LANES = [
    pytest.param("llama3.2:3b", "gpu-1", id="ollama"),
    pytest.param("claude-sonnet-4-6", "claude", id="anthropic"),
]


def codex_body(model: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(CAPTURE.read_text())["body"]
    return {**body, "model": model}


def replay(gw: RunningGateway, body: dict[str, Any]) -> tuple[Message, list[Any]]:
    """POST the body as Codex does and read the events as the openai SDK's models."""
    headers = {
        "authorization": f"Bearer {gw.key}",
        "accept": "text/event-stream",
        "content-type": "application/json",
        "originator": "codex_exec",
    }
    sent = urllib.request.Request(f"{gw.v1}/responses", json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(sent, timeout=30) as answer:
        assert answer.status == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        content = answer.read()
        got = answer.headers
    events = []
    for event in sse.parse(content):
        parsed = openai._models.construct_type(type_=ResponseStreamEvent, value=event.json())
        assert event.event == parsed.type  # named as OpenAI names them: Codex reads the data's type
        events.append(parsed)
    return got, events


@pytest.mark.parametrize(("model", "backend"), LANES)
def test_codex_first_and_second_turn(gw: RunningGateway, model: str, backend: str) -> None:
    body = codex_body(model)
    headers, events = replay(gw, body)
    assert headers["x-laneway-backend"] == backend
    assert headers["x-laneway-ignored-tools"] == "web_search"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.store is False
    # The sim calls the first tool it is offered: Codex's exec_command, by its own name.
    [call] = [item for item in done.response.output if item.type == "function_call"]
    assert call.name == "exec_command"
    assert json.loads(call.arguments) == {"cmd": "sim"}
    with pytest.raises(openai.NotFoundError):  # store: false: nothing kept to chain on
        openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0).responses.retrieve(done.response.id)

    # Codex's next turn: everything again, plus the call and what running it printed.
    output = [item.to_dict() for item in done.response.output]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "hi from the shell"}
    _, events = replay(gw, {**body, "input": [*body["input"], *output, result]})
    done = events[-1]
    assert done.type == "response.completed"
    assert "The tool said: hi from the shell" in done.response.output_text


def test_a_namespaced_tool_call_comes_back_with_its_namespace(gw: RunningGateway) -> None:
    body = codex_body("llama3.2:3b")
    [space] = [t for t in body["tools"] if t["type"] == "namespace"]
    body = {
        **body,
        "tools": [space],
        "tool_choice": "auto",  # the sim calls the first tool offered: close_agent, in the namespace
    }
    _, events = replay(gw, body)
    [call] = [item for item in events[-1].response.output if item.type == "function_call"]
    assert call.name == "close_agent"
    assert call.namespace == "multi_agent_v1"
    assert json.loads(call.arguments) == {"target": "sim"}


def test_reasoning_goes_back_to_an_anthropic_lane_with_its_signature(gw: RunningGateway) -> None:
    """With thinking on, Anthropic wants the signed thinking blocks back with a tool result: they
    travel in the reasoning item's ``encrypted_content``, which Codex sends back as it got it."""
    body = {**codex_body("claude-sonnet-4-6"), "reasoning": {"effort": "medium", "summary": "auto"}}
    _, events = replay(gw, body)
    kinds = [e.type for e in events]
    assert kinds.index("response.reasoning_text.delta") < kinds.index(
        "response.function_call_arguments.delta"
    )
    output = events[-1].response.output
    assert [item.type for item in output] == ["reasoning", "function_call"]
    reasoning = output[0]
    assert reasoning.content[0].text.startswith("Let me think")
    assert reasoning.encrypted_content.startswith("laneway.v1:")
    result = {"type": "function_call_output", "call_id": output[1].call_id, "output": "done"}
    items = [item.to_dict() for item in output]
    _, events = replay(gw, {**body, "input": [*body["input"], *items, result]})
    assert events[-1].type == "response.completed"
    assert "The tool said: done" in events[-1].response.output_text
