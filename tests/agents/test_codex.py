"""Codex CLI (``codex exec``, the real npm package) through laneway's ``/v1/responses``: to an
Ollama lane and to an Anthropic lane (both translated). It must exit 0 and print the sim's
answer, and the gateway must have served it from the expected lane."""

from __future__ import annotations

from typing import Any

import pytest

from tests.agents.conftest import (
    CLAUDE_MODEL,
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

# A custom provider at laneway (Codex speaks only the Responses API to custom providers), a
# read-only sandbox with no approvals (nothing may write, nobody is asked), no web search, no
# history, no analytics, no update check.
CONFIG = """\
model = "{model}"
model_provider = "laneway"
approval_policy = "never"
sandbox_mode = "read-only"
web_search = "disabled"
check_for_update_on_startup = false

[model_providers.laneway]
name = "laneway"
base_url = "{base_url}/v1"
env_key = "LANEWAY_API_KEY"
wire_api = "responses"

[history]
persistence = "none"

[analytics]
enabled = false

[shell_environment_policy]
inherit = "none"
"""


def codex(clis: AgentCLIs) -> list[Any]:
    return [clis.codex, "exec", "--skip-git-repo-check", "--sandbox", "read-only", "--ephemeral", "say hi"]


def run_codex(clis: AgentCLIs, world: AgentWorld, model: str) -> Any:
    codex_home = world.home / ".codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(CONFIG.format(model=model, base_url=world.gateway.url))
    env = world.env(CODEX_HOME=str(codex_home), LANEWAY_API_KEY=CLIENT_KEY)
    return run_agent(codex(clis), world, env)


def test_version_is_the_pinned_one(agent_clis: AgentCLIs, agent_world: AgentWorld) -> None:
    done = run_agent([agent_clis.codex, "--version"], agent_world, agent_world.env())
    assert done.returncode == 0, explain(done)
    assert done.stdout.strip() == "codex-cli " + agent_clis.versions["@openai/codex"]


def test_codex_on_an_ollama_lane(agent_clis: AgentCLIs, agent_world: AgentWorld) -> None:
    done = run_codex(agent_clis, agent_world, OLLAMA_MODEL)
    assert done.returncode == 0, explain(done)
    assert GREETING.format(model=OLLAMA_MODEL) in done.stdout, explain(done)
    assert agent_world.ollama.stats.inference_requests >= 1
    assert agent_world.anthropic.stats.inference_requests == 0
    rows = served_by(agent_world, "gpu-1")
    assert [(r["backend"], r["model"]) for r in rows] == [("gpu-1", OLLAMA_MODEL)]


def test_codex_on_an_anthropic_lane(agent_clis: AgentCLIs, agent_world: AgentWorld) -> None:
    done = run_codex(agent_clis, agent_world, CLAUDE_MODEL)
    assert done.returncode == 0, explain(done)
    assert GREETING.format(model=CLAUDE_MODEL) in done.stdout, explain(done)
    assert agent_world.anthropic.stats.inference_requests >= 1
    assert agent_world.ollama.stats.inference_requests == 0
    rows = served_by(agent_world, "claude")
    assert [(r["backend"], r["model"]) for r in rows] == [("claude", CLAUDE_MODEL)]
