"""Claude Code (``claude -p``, the real npm package) through laneway's ``/v1/messages``: to an
Anthropic lane (native) and to an Ollama lane (translated). It must exit 0 and print the sim's
answer, and the gateway must have served it from the expected lane."""

from __future__ import annotations

from typing import Any

import pytest

from tests.agents.conftest import (
    CLAUDE_MODEL,
    CODER_ROUTE,
    GREETING,
    OLLAMA_MODEL,
    AgentWorld,
    explain,
    run_agent,
    served_by,
)
from tests.agents.install import AgentCLIs
from tests.conftest import CLIENT_KEY

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("no_leftovers")]

# No phoning home: laneway is the only server Claude Code may talk to.
QUIET = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_BUG_COMMAND": "1",
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
}


def claude(clis: AgentCLIs, model: str) -> list[Any]:
    return [
        clis.claude,
        "-p",
        "say hi",
        "--model",
        model,
        "--tools",
        "",  # no built-in tools at all: nothing to run, read or edit
        "--strict-mcp-config",  # and no MCP servers
        "--permission-mode",
        "dontAsk",  # anything not allowed up front is denied
        "--no-session-persistence",
        "--disable-slash-commands",
    ]


def test_version_is_the_pinned_one(agent_clis: AgentCLIs, agent_world: AgentWorld) -> None:
    done = run_agent([agent_clis.claude, "--version"], agent_world, agent_world.env(**QUIET))
    assert done.returncode == 0, explain(done)
    assert done.stdout.startswith(agent_clis.versions["@anthropic-ai/claude-code"] + " "), done.stdout


def test_claude_code_on_an_anthropic_lane(agent_clis: AgentCLIs, agent_world: AgentWorld) -> None:
    env = agent_world.env(ANTHROPIC_BASE_URL=agent_world.gateway.url, ANTHROPIC_API_KEY=CLIENT_KEY, **QUIET)
    done = run_agent(claude(agent_clis, CLAUDE_MODEL), agent_world, env)
    assert done.returncode == 0, explain(done)
    assert GREETING.format(model=CLAUDE_MODEL) in done.stdout, explain(done)
    assert agent_world.anthropic.stats.requests_by_path.get("/v1/messages", 0) >= 1
    assert agent_world.ollama.stats.inference_requests == 0
    rows = served_by(agent_world, "claude")
    assert [(r["backend"], r["model"]) for r in rows] == [("claude", CLAUDE_MODEL)]


def test_claude_code_on_an_ollama_lane(agent_clis: AgentCLIs, agent_world: AgentWorld) -> None:
    # The Bearer form (ANTHROPIC_AUTH_TOKEN), and a route name rather than a model name.
    env = agent_world.env(
        ANTHROPIC_BASE_URL=agent_world.gateway.url, ANTHROPIC_AUTH_TOKEN=CLIENT_KEY, **QUIET
    )
    done = run_agent(claude(agent_clis, CODER_ROUTE), agent_world, env)
    assert done.returncode == 0, explain(done)
    assert GREETING.format(model=OLLAMA_MODEL) in done.stdout, explain(done)
    assert agent_world.ollama.stats.inference_requests >= 1
    assert agent_world.anthropic.stats.inference_requests == 0
    rows = served_by(agent_world, "gpu-1")
    assert [(r["backend"], r["model"]) for r in rows] == [("gpu-1", OLLAMA_MODEL)]
