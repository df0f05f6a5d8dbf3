"""Publisher tokens issued from the database: the repository and its migration (SQLite and the real
PostgreSQL of this machine), the grants' merge with the config file's, ``laneway publishers
tokens`` as its own process, and a running gateway that picks up a created or revoked token
without a restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from laneway.auth.tokens import PublisherGrant, PublisherTokens
from laneway.clock import ManualClock
from laneway.config.schema import PublisherTokenConfig
from laneway.errors import AuthenticationFailed
from laneway.gateway import GatewayOptions
from laneway.storage import AlreadyExists, Database, InvalidValue, hash_key
from laneway.storage.db import alembic_config, create_engine
from tests.cli.test_admin import laneway, ok, refused
from tests.conftest import RunningGateway
from tests.scripted_publisher import ScriptedPublisher

pytestmark = pytest.mark.anyio

START = 1_700_000_000.0
ADMIN = "lw-test-admin"
REGISTER = "/v1/publishers/register"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/laneway.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START)


async def _empty_tokens(url: str) -> None:
    """The PostgreSQL database is shared by the session: start from an empty table."""
    async with await Database.open(url) as database, database.engine.begin() as conn:
        await conn.execute(text("DELETE FROM publisher_tokens"))


@pytest.fixture
async def db(db_url: str, clock: ManualClock) -> AsyncIterator[Database]:
    await _empty_tokens(db_url)
    database = await Database.open(db_url, clock=clock)
    try:
        yield database
    finally:
        await database.aclose()


# --- the repository -----------------------------------------------------------------------------


async def test_the_secret_is_returned_once_and_only_its_hash_is_stored(db: Database) -> None:
    token, secret = await db.publisher_tokens.create("alice", ["alice-*", "lab-*", "alice-*"])
    assert secret.startswith("lw-pub-")
    assert len(secret) >= 45
    assert token.id.startswith("ptok_")
    assert token.token_hash == hash_key(secret)
    assert token.prefix == secret[:12]
    assert token.names == ("alice-*", "lab-*")  # duplicates dropped, order kept
    assert token.models == ("*",)  # every model unless told
    assert token.created_at == datetime.fromtimestamp(START, UTC)
    assert token.active

    async with db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM publisher_tokens"))).all()
    cells = [str(cell) for row in rows for cell in row]
    assert hash_key(secret) in cells
    assert not any(secret[12:] in cell for cell in cells)  # nothing past the display prefix


async def test_create_list_revoke_and_active(db: Database, clock: ManualClock) -> None:
    alice, alice_secret = await db.publisher_tokens.create("alice", ["alice-*"], ["llama*", "qwen*"])
    clock.advance(1)
    _, bob_secret = await db.publisher_tokens.create("bob", ["bob-*"])
    clock.advance(1)
    _, eve_secret = await db.publisher_tokens.create("eve", ["eve-*"])
    active = await db.publisher_tokens.active()
    assert {h: (t.name, t.names, t.models) for h, t in active.items()} == {
        hash_key(alice_secret): ("alice", ("alice-*",), ("llama*", "qwen*")),
        hash_key(bob_secret): ("bob", ("bob-*",), ("*",)),
        hash_key(eve_secret): ("eve", ("eve-*",), ("*",)),
    }

    assert await db.publisher_tokens.revoke(alice.id) is True  # by id
    assert await db.publisher_tokens.revoke("eve") is True  # by name
    assert await db.publisher_tokens.revoke("eve") is False  # already revoked
    assert await db.publisher_tokens.revoke("nobody") is False
    assert list(await db.publisher_tokens.active()) == [hash_key(bob_secret)]

    assert [t.name for t in await db.publisher_tokens.list()] == ["bob"]
    everything = await db.publisher_tokens.list(include_revoked=True)
    assert [(t.name, t.active) for t in everything] == [("alice", False), ("bob", True), ("eve", False)]
    assert everything[0].revoked_at == datetime.fromtimestamp(START + 2, UTC)


async def test_a_name_is_unique_among_active_tokens_and_bad_values_are_refused(db: Database) -> None:
    await db.publisher_tokens.create("alice", ["alice-*"])
    with pytest.raises(AlreadyExists, match="alice"):
        await db.publisher_tokens.create("alice", ["other-*"])
    assert await db.publisher_tokens.revoke("alice")
    _, secret = await db.publisher_tokens.create("alice", ["alice-*"])  # free again once revoked
    assert list(await db.publisher_tokens.active()) == [hash_key(secret)]
    for name, names, models in [
        ("bad name", ["a-*"], ["*"]),
        ("ok", [], ["*"]),
        ("ok", [""], ["*"]),
        ("ok", ["a-* b-*"], ["*"]),
        ("ok", ["a-*"], ["llama 3"]),
        ("ok", ["x" * 256], ["*"]),
    ]:
        with pytest.raises(InvalidValue):
            await db.publisher_tokens.create(name, names, models)
    assert len(await db.publisher_tokens.list(include_revoked=True)) == 2  # nothing half-stored


# --- the migration ------------------------------------------------------------------------------


async def _alembic(url: str, step: Callable[[Config], None]) -> tuple[str, set[str], set[str]]:
    """Run one Alembic command on ``url``; then (version, tables, publisher_tokens' indexes)."""

    def run(conn: Connection) -> tuple[str, set[str], set[str]]:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        step(cfg)
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        found = inspect(conn)
        tables = set(found.get_table_names())
        indexes = (
            {ix["name"] for ix in found.get_indexes("publisher_tokens") if ix["name"]}
            if "publisher_tokens" in tables
            else set()
        )
        return version, tables, indexes

    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(run)
    finally:
        await engine.dispose()


async def test_the_migration_upgrades_and_downgrades(fresh_url: str) -> None:
    version, tables, _ = await _alembic(fresh_url, lambda cfg: command.upgrade(cfg, "0002"))
    assert version == "0002"
    assert "publisher_tokens" not in tables
    assert {"api_keys", "usage_records"} <= tables

    version, tables, indexes = await _alembic(fresh_url, lambda cfg: command.upgrade(cfg, "0003"))
    assert version == "0003"
    assert "publisher_tokens" in tables
    assert "uq_publisher_tokens_active_name" in indexes

    version, tables, _ = await _alembic(fresh_url, lambda cfg: command.downgrade(cfg, "0002"))
    assert (version, "publisher_tokens" in tables) == ("0002", False)

    async with await Database.open(fresh_url) as database:  # migrates to head again
        token, secret = await database.publisher_tokens.create("alice", ["alice-*"])
        assert await database.publisher_tokens.active() == {hash_key(secret): token}


# --- the grants ---------------------------------------------------------------------------------


def test_stored_grants_are_replaced_and_the_config_wins_a_shared_hash() -> None:
    tokens = PublisherTokens(
        [
            PublisherTokenConfig(name="ops", token="cfg-secret", names=["*"]),
            PublisherTokenConfig(name="pinned", token_hash=hash_key("db-secret"), names=["pin-*"]),
        ]
    )
    assert len(tokens) == 2
    tokens.replace_stored(
        {
            hash_key("new-secret"): PublisherGrant("alice", ("alice-*",), ("*",)),
            hash_key("db-secret"): PublisherGrant("db-owner", ("other-*",), ("*",)),
        }
    )
    assert len(tokens) == 3
    assert tokens.identify("Bearer new-secret").owner == "alice"
    assert tokens.identify("Bearer db-secret").owner == "pinned"  # the config file's grant
    assert tokens.identify("Bearer cfg-secret").owner == "ops"

    tokens.replace_stored({})  # alice's token was revoked
    with pytest.raises(AuthenticationFailed):
        tokens.identify("Bearer new-secret")
    assert tokens.identify("Bearer cfg-secret").owner == "ops"  # the config's stay
    assert tokens.identify("Bearer db-secret").owner == "pinned"
    assert len(tokens) == 2


# --- the CLI and a running gateway ---------------------------------------------------------------


def _cli(*args: str) -> Any:
    return laneway("publishers", "tokens", *args)


async def wait_for(predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll until ``predicate()`` holds; a bound on waiting, not a timing assertion."""
    for _ in range(int(limit / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


async def test_a_token_created_with_the_cli_works_on_a_running_gateway_until_revoked(
    gateway_factory: Any, db_url: str, tmp_path: Path
) -> None:
    await _empty_tokens(db_url)
    gw: RunningGateway = gateway_factory(
        {
            "storage": {"database_url": db_url, "data_dir": str(tmp_path / "gw")},
            "auth": {"keys": [{"name": "ops", "key": ADMIN, "admin": True}]},
        },
        options=GatewayOptions(schedule=False, key_reload_interval=0.05),
    )
    fleet = gw.gateway.fleet
    assert fleet is not None
    assert len(fleet.tokens) == 0

    done = await asyncio.to_thread(
        _cli, "create", "alice", "--names", "alice-*", "--models", "llama*", "--database-url", db_url
    )
    secret = ok(done).strip()
    assert secret.startswith("lw-pub-")
    assert "laneway publish" in done.stderr
    assert "--token" in done.stderr
    await wait_for(lambda: len(fleet.tokens) == 1, "the gateway to reload its publisher tokens")

    publisher = ScriptedPublisher(gw.url, secret)
    try:
        answer = await publisher.register(name="alice-laptop", lanes=[{"model": "llama3.2:1b"}])
        assert [lane["model"] for lane in answer["lanes"]] == ["llama3.2:1b"]
        await publisher.connect()

        # Its scope: the names and models it was created with.
        status, body = await publisher.call(
            "POST", REGISTER, {"name": "bob-box", "lanes": [{"model": "llama3"}]}
        )
        assert status == 403
        assert "may not publish as 'bob-box'" in body["error"]["message"]
        status, body = await publisher.call(
            "POST", REGISTER, {"name": "alice-2", "lanes": [{"model": "qwen2.5:7b"}]}
        )
        assert status == 403
        assert "may not publish the model 'qwen2.5:7b'" in body["error"]["message"]

        # A publisher token is not a client key.
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                gw.v1 + "/chat/completions",
                json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {secret}"},
            ) as resp,
        ):
            assert resp.status == 401

        listed = json.loads(ok(await asyncio.to_thread(_cli, "list", "--json", "--database-url", db_url)))
        assert [(t["name"], t["names"], t["models"]) for t in listed] == [("alice", ["alice-*"], ["llama*"])]
        assert ok(await asyncio.to_thread(_cli, "revoke", "alice", "--database-url", db_url))
        await wait_for(lambda: len(fleet.tokens) == 0, "the gateway to drop the revoked token")

        status, body = await publisher.call("POST", REGISTER, {"name": "alice-laptop", "lanes": []})
        assert status == 401
        assert body["error"]["message"] == "Invalid publisher token"
        status, _ = await publisher.heartbeat()
        assert status == 401
        # The session it opened before the revocation is cut off: stream closed, lanes inactive.
        async with (
            aiohttp.ClientSession() as http,
            http.get(gw.url + "/admin/publishers", headers={"authorization": f"Bearer {ADMIN}"}) as resp,
        ):
            sessions = (await resp.json())["publishers"]
        assert [(s["name"], s["owner"], s["control"]) for s in sessions] == [("alice-laptop", "alice", False)]
        assert [lane["state"] for lane in sessions[0]["lanes"]] == ["inactive"]
    finally:
        await publisher.aclose()


def test_cli_lists_tokens_and_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    assert "no publisher tokens" in ok(_cli("list", "--database-url", url))
    first = _cli("create", "alice", "--names", "alice-*", "--database-url", url)
    assert ok(first).strip().startswith("lw-pub-")
    assert "cannot be shown again" in first.stderr
    ok(
        _cli(
            "create",
            "bob",
            "--names",
            "bob-*",
            "--names",
            "lab-*",
            "--models",
            "qwen*",
            "--join-declared",
            "--database-url",
            url,
        )
    )

    header, *rows = ok(_cli("list", "--database-url", url)).splitlines()
    assert header.split() == [
        "ID",
        "NAME",
        "NAMES",
        "MODELS",
        "JOIN",
        "DECLARED",
        "PREFIX",
        "CREATED",
        "REVOKED",
    ]
    assert [r.split()[1:5] for r in rows] == [
        ["alice", "alice-*", "*", "no"],
        ["bob", "bob-*,lab-*", "qwen*", "yes"],
    ]
    bob_id = rows[1].split()[0]
    assert ok(_cli("revoke", bob_id, "--database-url", url)) == f"revoked publisher token '{bob_id}'\n"
    assert [r.split()[1] for r in ok(_cli("list", "--database-url", url)).splitlines()[1:]] == ["alice"]
    everything = json.loads(ok(_cli("list", "--all", "--json", "--database-url", url)))
    assert [(t["name"], t["revoked_at"] is None) for t in everything] == [("alice", True), ("bob", False)]

    assert "--names" in refused(_cli("create", "carol", "--database-url", url))
    assert "'alice'" in refused(_cli("create", "alice", "--names", "x-*", "--database-url", url))
    assert "no spaces" in refused(_cli("create", "carol", "--names", "a-* b-*", "--database-url", url))
    assert "not a valid publisher token name" in refused(
        _cli("create", "bad name", "--names", "x", "--database-url", url)
    )
    assert "no active publisher token with id or name 'nobody'" in refused(
        _cli("revoke", "nobody", "--database-url", url)
    )
    assert "'" + bob_id + "'" in refused(_cli("revoke", bob_id, "--database-url", url))  # already revoked


def test_a_config_file_names_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/from-config.db"
    config = tmp_path / "laneway.yaml"
    config.write_text(f"storage:\n  database_url: {url}\n")
    ok(_cli("create", "alice", "--names", "alice-*", "--config", str(config)))
    listed = json.loads(ok(_cli("list", "--json", "--database-url", url)))
    assert [t["name"] for t in listed] == ["alice"]
