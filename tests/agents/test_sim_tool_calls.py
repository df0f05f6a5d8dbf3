"""The sim's ``tool_calls`` option, which the agent tests rely on: under "forced" a sim offered
tools answers text unless the tool choice forces a call, so a coding agent is never asked to run a
command. Read through the official openai and anthropic SDKs."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import anthropic
import openai
import pytest

from laneway.sim import SimOptions

SHELL_OPENAI: Any = [
    {
        "type": "function",
        "function": {
            "name": "exec_command",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
        },
    }
]
SHELL_ANTHROPIC: Any = [
    {
        "name": "Bash",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    }
]
ASK: Any = [{"role": "user", "content": "say hi"}]


def test_forced_answers_text_when_tools_are_merely_offered(sim_factory: Any) -> None:
    sim = sim_factory(family="ollama", tool_calls="forced", models=["qwen3:8b"])
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="k")
    reply = client.chat.completions.create(model="qwen3:8b", messages=ASK, tools=SHELL_OPENAI)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.tool_calls is None
    assert (reply.choices[0].message.content or "").startswith("Hello from qwen3:8b.")

    claude = anthropic.Anthropic(base_url=sim.url, api_key="k")
    message = claude.messages.create(model="qwen3:8b", max_tokens=100, messages=ASK, tools=SHELL_ANTHROPIC)
    assert message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["text"]


def test_forced_still_calls_a_tool_when_the_choice_forces_one(sim_factory: Any) -> None:
    sim = sim_factory(family="anthropic", tool_calls="forced")
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="k")
    reply = client.chat.completions.create(
        model="claude-sonnet-4-6", messages=ASK, tools=SHELL_OPENAI, tool_choice="required"
    )
    calls = reply.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].type == "function"
    assert json.loads(calls[0].function.arguments) == {"cmd": "sim"}

    claude = anthropic.Anthropic(base_url=sim.url, api_key="k")
    for choice in ({"type": "any"}, {"type": "tool", "name": "Bash"}):
        message = claude.messages.create(
            model="claude-sonnet-4-6", max_tokens=100, messages=ASK, tools=SHELL_ANTHROPIC, tool_choice=choice
        )
        assert message.stop_reason == "tool_use", choice
        assert message.content[0].type == "tool_use"


def test_auto_is_the_default_and_calls_a_tool_whenever_offered(sim_factory: Any) -> None:
    sim = sim_factory(family="anthropic")
    assert sim.options.tool_calls == "auto"
    claude = anthropic.Anthropic(base_url=sim.url, api_key="k")
    message = claude.messages.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=ASK, tools=SHELL_ANTHROPIC
    )
    assert message.stop_reason == "tool_use"


def test_the_option_is_validated_and_patchable(sim_factory: Any) -> None:
    with pytest.raises(ValueError, match="tool_calls must be one of auto, forced"):
        SimOptions(tool_calls="sometimes").validate()
    sim = sim_factory(family="openai")
    request = urllib.request.Request(
        sim.url + "/_sim/options",
        data=json.dumps({"tool_calls": "forced"}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    assert sim.options.tool_calls == "forced"


def test_the_cli_flag_takes_auto_or_forced() -> None:
    from click.testing import CliRunner

    from laneway.cli import cli

    runner = CliRunner()
    assert "--tool-calls [auto|forced]" in runner.invoke(cli, ["sim", "--help"]).output
    wrong = runner.invoke(cli, ["sim", "--tool-calls", "sometimes", "--port", "0"])
    assert wrong.exit_code == 2
    assert "'sometimes' is not one of 'auto', 'forced'" in wrong.output
