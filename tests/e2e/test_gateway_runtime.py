"""The gateway as a running service: disconnects, keys from the database (SQLite and PostgreSQL),
and the `laneway` command's front doors as separate processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from laneway.gateway import GatewayOptions
from laneway.storage import Database
from tests.conftest import CLIENT_KEY, RunningGateway

CHAT = [{"role": "user", "content": "hi"}]


async def wait_for(predicate: Any, what: str, limit: float = 10.0) -> None:
    """Poll until ``predicate()`` holds; a bound on waiting, not a timing assertion."""
    for _ in range(int(limit / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.mark.anyio
@pytest.mark.parametrize(("model", "family"), [("gpt-4o-mini", "openai"), ("claude-sonnet-4-6", "anthropic")])
async def test_client_disconnect_mid_stream_cancels_upstream(
    gw: RunningGateway, model: str, family: str
) -> None:
    sim = gw.sims[family]
    sim.options.tokens_per_second = 5  # a long stream: one token every 200 ms
    body = {"model": model, "messages": CHAT, "stream": True}
    headers = {"authorization": f"Bearer {gw.key}"}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gw.v1 + "/chat/completions", json=body, headers=headers)
        assert resp.status == 200
        await resp.content.readline()  # the first bytes arrived: the stream is live upstream
        assert sim.stats.active_streams == 1
        resp.close()  # the client walks away
    await wait_for(lambda: sim.stats.active_streams == 0, "the upstream stream to stop")
    assert sim.stats.streams_cancelled == 1
    assert sim.stats.streams_completed == 0


@pytest.mark.anyio
async def test_keys_created_in_postgresql_authenticate(
    gateway_factory: Any, sim_factory: Any, pg_url: str, tmp_path: Path
) -> None:
    db = await Database.open(pg_url)
    try:
        _, secret = await db.keys.create("pg-app", caller="team-a")
        sim = sim_factory(family="openai")
        gw = gateway_factory(
            {
                "storage": {"database_url": pg_url},
                "backends": {"b": {"provider": "openai", "base_url": sim.url}},
            },
            options=GatewayOptions(key_reload_interval=0.05),
        )
        async with openai.AsyncOpenAI(base_url=gw.v1, api_key=secret, max_retries=0) as client:
            reply = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
            assert reply.choices[0].message.content
            assert await db.keys.revoke("pg-app")
            await wait_for(lambda: len(gw.gateway.keys) == 0, "the gateway to reload its keys")
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    finally:
        await db.aclose()


@pytest.mark.anyio
async def test_backend_added_to_sqlite_is_served(
    gateway_factory: Any, sim_factory: Any, tmp_path: Path
) -> None:
    from laneway.config import BackendConfig

    sim = sim_factory(family="ollama")
    url = f"sqlite:///{tmp_path / 'state.db'}"
    db = await Database.open(url)
    try:
        await db.backends.add("from-db", BackendConfig(provider="ollama", base_url=sim.url))
    finally:
        await db.aclose()
    gw = gateway_factory(
        {"storage": {"database_url": url}, "auth": {"keys": [{"name": "t", "key": CLIENT_KEY}]}}
    )
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="from-db/llama3.2:3b", messages=CHAT
        )  # type: ignore[arg-type]
    assert raw.headers["x-laneway-backend"] == "from-db"


def laneway(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "laneway", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_serve_with_a_bad_config_says_what_to_fix(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("backends:\n  gpu-1:\n    provider: ollama\n    base_url: localhost:11434\n")
    done = laneway("serve", "--config", str(config))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"{config}:4" in done.stderr
    assert "backends.gpu-1.base_url" in done.stderr


def test_serve_with_an_unreachable_database_says_so(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"storage": {"database_url": "postgresql://postgres@127.0.0.1:1/x"}}))
    done = laneway("serve", "--config", str(config), "--port", "0")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "127.0.0.1:1" in done.stderr


def test_models_command_discovers_each_family(three_sims: Any, tmp_path: Path) -> None:
    from tests.conftest import three_family_config

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(three_family_config(three_sims, tmp_path / "data")))
    done = laneway("models", "--config", str(config))
    assert done.returncode == 0, done.stderr
    for expected in (
        "llama3.2:3b",
        "gpt-4o-mini",
        "claude-sonnet-4-6",
        "local:ollama:gpu-1:chat:llama3.2%3A3b",
    ):
        assert expected in done.stdout


def test_help_lists_the_commands() -> None:
    done = laneway("--help")
    assert done.returncode == 0
    for command in ("serve", "demo", "sim", "backends", "keys", "models"):
        assert command in done.stdout
