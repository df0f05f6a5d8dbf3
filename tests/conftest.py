"""Shared fixtures: real servers on loopback (the simulated upstreams and the gateway), real SQLite
and the real PostgreSQL of this machine. Nothing of laneway's own is mocked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from laneway.api.app import GatewayApp
from laneway.api.edge import EdgeStats
from laneway.config import settings_from_data
from laneway.gateway import Gateway, GatewayOptions
from laneway.sim.app import build_sim_app
from laneway.sim.options import SimOptions
from laneway.testing import ServerThread

CLIENT_KEY = "lw-test-client-key"
OPENAI_KEY = "sim-openai-key"
ANTHROPIC_KEY = "sim-anthropic-key"
PG_ADMIN_DSN = os.environ.get("LANEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Sim:
    url: str
    options: SimOptions
    app: Any
    thread: ServerThread

    @property
    def stats(self) -> Any:
        return self.app.stats


@pytest.fixture
def sim_factory() -> Iterator[Any]:
    """Start simulated upstreams on free ports: ``sim_factory(family="ollama", ...)``."""
    threads: list[ServerThread] = []

    def start(**options: Any) -> Sim:
        opts = SimOptions(**options)
        app = build_sim_app(opts)
        thread = ServerThread(app)
        threads.append(thread)
        return Sim(thread.start(), opts, app, thread)

    yield start
    for thread in threads:
        thread.stop()


@dataclass
class RunningGateway:
    url: str
    key: str
    gateway: Gateway
    sims: dict[str, Sim]
    edge: EdgeStats = field(default_factory=EdgeStats)  # what its HTTP edge cut

    @property
    def v1(self) -> str:
        return self.url + "/v1"


def three_family_config(sims: dict[str, Sim], data_dir: Path, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "storage": {"data_dir": str(data_dir)},
        "auth": {"keys": [{"name": "tests", "key": CLIENT_KEY}]},
        "backends": {
            "gpu-1": {"provider": "ollama", "base_url": sims["ollama"].url},
            "oai": {"provider": "openai", "base_url": sims["openai"].url + "/v1", "api_key": OPENAI_KEY},
            "claude": {"provider": "anthropic", "base_url": sims["anthropic"].url, "api_key": ANTHROPIC_KEY},
        },
        "routes": {
            "smart": ["claude/claude-sonnet-*", "oai/gpt-4o-mini"],
            "fast": ["gpu-1/llama3.2:*@low"],
            "embed": ["*embed*"],
        },
    }
    for key, value in extra.items():
        config[key] = value
    return config


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Any]:
    """Run the gateway on a free port in front of the given config."""
    threads: list[ServerThread] = []

    def start(
        config: dict[str, Any], sims: dict[str, Sim] | None = None, options: GatewayOptions | None = None
    ) -> RunningGateway:
        config.setdefault("storage", {"data_dir": str(tmp_path / f"gw-{len(threads)}")})
        settings = settings_from_data(config, source="test-config.yaml")
        options = options or GatewayOptions(schedule=False, key_reload_interval=3600)
        stats = EdgeStats()  # as `laneway serve` serves it: under its limits, their cuts in /metrics
        # Opened on the server's own loop, when it starts.
        app = GatewayApp(lambda: Gateway.open(settings, options=options), edge=stats)
        thread = ServerThread(app, edge=settings.server, edge_stats=stats)
        threads.append(thread)
        url = thread.start()
        return RunningGateway(url, CLIENT_KEY, app.gateway, sims or {}, thread.edge_stats)

    yield start
    for thread in threads:
        thread.stop()


@pytest.fixture
def three_sims(sim_factory: Any) -> dict[str, Sim]:
    return {
        "ollama": sim_factory(family="ollama"),
        "openai": sim_factory(family="openai", api_key=OPENAI_KEY),
        "anthropic": sim_factory(family="anthropic", api_key=ANTHROPIC_KEY),
    }


@pytest.fixture
def gw(gateway_factory: Any, three_sims: dict[str, Sim], tmp_path: Path) -> RunningGateway:
    """The gateway in front of one simulated upstream of each family."""
    running: RunningGateway = gateway_factory(three_family_config(three_sims, tmp_path / "gw"), three_sims)
    return running


@contextlib.contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database on this machine's server; dropped when the block ends."""
    import asyncpg

    name = f"laneway_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database nobody migrated yet, once on SQLite and once on PostgreSQL (a database of its
    own, dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/fresh.db"
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end. Never skipped:
    PostgreSQL runs on this machine and in CI, and a test run without it is a failed run."""
    with fresh_pg_database() as url:
        yield url
