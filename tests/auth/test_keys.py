"""Grants of keys and publisher tokens created in the database (``laneway keys create --admin``,
``publishers tokens create --join-declared``): migration 0004 on SQLite and the real PostgreSQL of
this machine, the repositories, the CLI as its own process, and a running gateway that reloads
them and gives database keys the admin flag and grant a config key would have."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from laneway.auth.keys import Grant, KeyRing, merge_key_entries
from laneway.gateway import GatewayOptions
from laneway.storage import Database, InvalidValue, hash_key
from laneway.storage.db import alembic_config, create_engine
from tests.cli.test_admin import laneway, ok
from tests.conftest import RunningGateway

pytestmark = pytest.mark.anyio

CHAT = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}]}


async def _on(url: str, work: Callable[[Connection], Any]) -> Any:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


def _alembic(step: Callable[[Config], None]) -> Callable[[Connection], set[str]]:
    """Run one Alembic command; then the columns of api_keys and publisher_tokens."""

    def run(conn: Connection) -> set[str]:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        step(cfg)
        found = inspect(conn)
        return {f"{t}.{c['name']}" for t in ("api_keys", "publisher_tokens") for c in found.get_columns(t)}

    return run


GRANT_COLUMNS = {
    "api_keys.admin",
    "api_keys.trusted",
    "api_keys.max_priority",
    "api_keys.published_lanes",
    "publisher_tokens.join_declared",
}


async def test_rows_from_before_the_migration_get_no_more_than_they_had(fresh_url: str) -> None:
    columns = await _on(fresh_url, _alembic(lambda cfg: command.upgrade(cfg, "0003")))
    assert not GRANT_COLUMNS & columns

    def old_rows(conn: Connection) -> None:
        now = "2026-01-01 00:00:00"
        conn.execute(
            text(
                "INSERT INTO api_keys (id, name, caller, key_hash, prefix, created_at) "
                f"VALUES ('key_old', 'old', 'old', :h, 'lw-old', '{now}')"
            ),
            {"h": hash_key("old-secret")},
        )
        conn.execute(
            text(
                "INSERT INTO publisher_tokens (id, name, token_hash, prefix, names, models, created_at) "
                f"""VALUES ('ptok_old', 'old', :h, 'lw-pub-old', '["old-*"]', '["*"]', '{now}')"""
            ),
            {"h": hash_key("old-token")},
        )

    await _on(fresh_url, old_rows)
    columns = await _on(fresh_url, _alembic(lambda cfg: command.upgrade(cfg, "head")))
    assert columns >= GRANT_COLUMNS
    async with await Database.open(fresh_url) as db:
        key = (await db.keys.active())[hash_key("old-secret")]
        assert (key.admin, key.trusted, key.max_priority, key.published_lanes) == (False, False, 0, True)
        token = (await db.publisher_tokens.active())[hash_key("old-token")]
        assert token.join_declared is False

    columns = await _on(fresh_url, _alembic(lambda cfg: command.downgrade(cfg, "0003")))
    assert not GRANT_COLUMNS & columns


async def test_the_repositories_keep_the_grants(fresh_url: str) -> None:
    async with await Database.open(fresh_url) as db:
        ops, ops_secret = await db.keys.create("ops", admin=True)
        batch, _ = await db.keys.create("batch", trusted=True, max_priority=3, published_lanes=False)
        plain, _ = await db.keys.create("app")
        assert (ops.admin, ops.trusted, ops.max_priority, ops.published_lanes) == (True, False, 0, True)
        assert (batch.admin, batch.trusted, batch.max_priority, batch.published_lanes) == (
            False,
            True,
            3,
            False,
        )
        assert (plain.admin, plain.trusted, plain.max_priority, plain.published_lanes) == (
            False,
            False,
            0,
            True,
        )
        assert (await db.keys.active())[hash_key(ops_secret)] == ops
        assert [k.name for k in await db.keys.list() if k.admin] == ["ops"]
        with pytest.raises(InvalidValue, match="max_priority must be from 0 to 9"):
            await db.keys.create("greedy", max_priority=10)

        joins, _ = await db.publisher_tokens.create("lab", ["lab-*"], join_declared=True)
        alone, _ = await db.publisher_tokens.create("alice", ["alice-*"])
        assert (joins.join_declared, alone.join_declared) == (True, False)
        stored = {t.name: t.join_declared for t in await db.publisher_tokens.list()}
        assert stored == {"lab": True, "alice": False}


def test_a_config_key_wins_a_hash_the_database_also_holds() -> None:
    shared, db_only = hash_key("shared"), hash_key("db-only")
    config = ({shared: "cfg"}, frozenset[str](), {})
    stored = (
        {shared: "db", db_only: "ops"},
        frozenset({shared, db_only}),
        {shared: Grant(9, True, True), db_only: Grant(2, False, False)},
    )
    callers, admins, grants = merge_key_entries(config, stored)
    assert callers == {shared: "cfg", db_only: "ops"}
    assert admins == {db_only}  # the config file's key is not admin, whatever the database says
    assert grants == {db_only: Grant(2, False, False)}
    ring = KeyRing()
    ring.replace(callers, admins=admins, grants=grants)
    assert ring.identify("Bearer shared", None, priority="9").priority == 0


def _create(url: str, *args: str) -> str:
    done = laneway("keys", "create", *args, "--database-url", url)
    secret = ok(done).strip()
    assert secret.startswith("lw-"), done.stderr
    return secret


async def _get(url: str, key: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"authorization": f"Bearer {key}"}) as r,
    ):
        return r.status


async def _chat(url: str, key: str, **headers: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=CHAT, headers={"authorization": f"Bearer {key}", **headers}) as resp,
    ):
        return resp.status


async def test_keys_created_with_the_cli_get_their_grants_on_a_running_gateway(
    gateway_factory: Any, sim_factory: Any, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    sim = sim_factory(family="ollama")
    gw: RunningGateway = gateway_factory(
        {
            "storage": {"database_url": url, "data_dir": str(tmp_path / "gw")},
            "backends": {"gpu-1": {"provider": "ollama", "base_url": sim.url}},
        },
        options=GatewayOptions(schedule=False, key_reload_interval=0.05),
    )
    ring = gw.gateway.keys
    ops = await asyncio.to_thread(_create, url, "ops", "--admin")
    batch = await asyncio.to_thread(
        _create, url, "batch", "--trusted", "--max-priority", "3", "--no-published-lanes"
    )
    app = await asyncio.to_thread(_create, url, "app")
    for _ in range(500):  # the gateway reloads keys every 0.05 s; this bounds the wait
        if len(ring) == 3:
            break
        await asyncio.sleep(0.02)
    assert len(ring) == 3

    lanes = gw.url + "/admin/lanes"
    assert await _get(lanes, ops) == 200
    assert await _get(lanes, app) == 403
    assert await _get(lanes, batch) == 403

    chat = gw.v1 + "/chat/completions"
    assert await _chat(chat, batch, **{"x-laneway-caller": "alice"}) == 200  # trusted
    assert await _chat(chat, app, **{"x-laneway-caller": "alice"}) == 403

    capped = ring.identify(f"Bearer {batch}", None, priority="9", sub_caller="alice")
    assert (capped.caller, capped.priority, capped.admin, capped.published_lanes) == (
        "batch/alice",
        3,
        False,
        False,
    )
    plain = ring.identify(f"Bearer {app}", None, priority="9")
    assert (plain.priority, plain.admin, plain.published_lanes) == (0, False, True)
    assert ring.identify(f"Bearer {ops}", None).admin

    listed = ok(await asyncio.to_thread(laneway, "keys", "list", "--database-url", url))
    header, *rows = listed.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "CALLER", "GRANTS"]
    assert {r.split()[1]: r.split()[3] for r in rows} == {
        "ops": "admin",
        "batch": "trusted,priority<=3,no-published-lanes",
        "app": "-",
    }
    as_json = json.loads(
        ok(await asyncio.to_thread(laneway, "keys", "list", "--json", "--database-url", url))
    )
    assert {k["name"]: (k["admin"], k["max_priority"]) for k in as_json} == {
        "ops": (True, 0),
        "batch": (False, 3),
        "app": (False, 0),
    }
    greedy = await asyncio.to_thread(
        laneway, "keys", "create", "x", "--max-priority", "10", "--database-url", url
    )
    assert greedy.returncode == 2  # click's usage error, naming the option and the range
    assert "'--max-priority': 10 is not in the range 0<=x<=9" in greedy.stderr

    done = await asyncio.to_thread(
        laneway,
        "publishers",
        "tokens",
        "create",
        "lab",
        "--names",
        "lab-*",
        "--join-declared",
        "--database-url",
        url,
    )
    token = ok(done).strip()
    assert "may join declared models" in done.stderr
    fleet = gw.gateway.fleet
    assert fleet is not None
    for _ in range(500):
        if len(fleet.tokens) == 1:
            break
        await asyncio.sleep(0.02)
    assert fleet.tokens.identify(f"Bearer {token}").join_declared is True
