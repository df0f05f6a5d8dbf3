"""The harness for the coding-agent tests: the real Claude Code and Codex CLIs (npm, pinned and
cached by ``install.py``), run non-interactively against a real gateway in front of real sims.

Defence in depth, so no agent can touch this machine: the sims run with ``tool_calls="forced"``
(they answer text, never a tool call, since neither CLI forces a tool choice); Claude Code runs
with no built-in tools (``--tools ""``), no MCP servers and ``--permission-mode dontAsk``; Codex
runs in its read-only sandbox with approvals off; both in an empty working directory under
tmp_path with HOME there too, and with an environment built from scratch (no real API keys, no
telemetry, no auto-update).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.agents.install import AgentCLIs, InstallError, ensure_installed
from tests.conftest import ANTHROPIC_KEY, CLIENT_KEY, RunningGateway, Sim

AGENT_TIMEOUT = 120.0
OLLAMA_MODEL = "qwen3:8b"
CLAUDE_MODEL = "claude-sonnet-4-6"
CODER_ROUTE = "coder"  # a route name a team would give its local coding model
# What the sim says first: the model name it was asked for (after laneway's rewrite to the lane's).
GREETING = "Hello from {model}."

# Only what a CLI needs to start; nothing else of the caller's environment leaks in (no keys).
_PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")


@pytest.fixture(scope="session")
def agent_clis() -> AgentCLIs:
    """The pinned CLIs, installed once per cache. A missing npm or a failed install FAILS the
    tests (with npm's output): CI must run them, a skip would hide that they did not."""
    try:
        return ensure_installed()
    except InstallError as exc:
        pytest.fail(str(exc), pytrace=False)


@dataclass
class AgentWorld:
    """A gateway in front of one Ollama sim and one Anthropic sim, and the scratch dirs."""

    gateway: RunningGateway
    ollama: Sim
    anthropic: Sim
    home: Path
    work: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"), NO_COLOR="1")
        env.update(extra)
        return env


@pytest.fixture
def agent_world(sim_factory: Any, gateway_factory: Any, tmp_path: Path) -> AgentWorld:
    ollama = sim_factory(family="ollama", models=[OLLAMA_MODEL], tool_calls="forced")
    claude = sim_factory(
        family="anthropic", models=[CLAUDE_MODEL], api_key=ANTHROPIC_KEY, tool_calls="forced"
    )
    config = {
        "auth": {"keys": [{"name": "agents", "key": CLIENT_KEY, "admin": True}]},
        "backends": {
            "gpu-1": {"provider": "ollama", "base_url": ollama.url},
            "claude": {"provider": "anthropic", "base_url": claude.url, "api_key": ANTHROPIC_KEY},
        },
        "routes": {CODER_ROUTE: [f"gpu-1/{OLLAMA_MODEL}"]},
    }
    gateway = gateway_factory(config, {"ollama": ollama, "anthropic": claude})
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    return AgentWorld(gateway, ollama, claude, home, work)


def run_agent(
    argv: list[str | Path], world: AgentWorld, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run one CLI to completion; a hang fails the test with what it printed so far."""
    command = [str(a) for a in argv]
    try:
        return subprocess.run(
            command,
            cwd=world.work,
            env=env,
            stdin=subprocess.DEVNULL,  # Codex reads a prompt from a piped stdin: give it none
            capture_output=True,
            text=True,
            timeout=AGENT_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{command[0]} did not finish in {AGENT_TIMEOUT:.0f} s\n"
            f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}",
            pytrace=False,
        )


def explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def served_by(world: AgentWorld, backend: str) -> list[dict[str, Any]]:
    """The gateway's usage rows by backend and model, once the request it served is recorded.

    The usage recorder writes in batches off the request path, so this waits for the row (a
    bounded poll, not a timed assertion)."""

    async def read() -> list[dict[str, Any]]:
        headers = {"authorization": f"Bearer {CLIENT_KEY}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            rows: list[dict[str, Any]] = []
            for _ in range(500):
                async with session.get(world.gateway.url + "/admin/usage?group_by=backend,model") as r:
                    assert r.status == 200, await r.text()
                    rows = (await r.json())["rows"]
                if any(row["backend"] == backend for row in rows):
                    break
                await asyncio.sleep(0.02)
            return rows

    return asyncio.run(read())


@pytest.fixture
def no_leftovers(agent_world: AgentWorld) -> Iterator[None]:
    """The agent wrote nothing into its working directory."""
    yield
    assert sorted(p.name for p in agent_world.work.iterdir()) == []
