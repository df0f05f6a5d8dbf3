"""Declared state (SQLite and the real PostgreSQL of this machine) and the in-memory runtime store."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from laneway.clock import ManualClock
from laneway.config import BackendConfig
from laneway.errors import ConfigError
from laneway.storage import (
    AlreadyExists,
    Database,
    DatabaseUnavailable,
    InvalidValue,
    KeyValueStore,
    MemoryStore,
    hash_key,
    migrate,
    redact_url,
    to_async_url,
)
from laneway.storage.db import alembic_config, create_engine
from laneway.storage.models import Base

PG_ADMIN_DSN = os.environ.get("LANEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
START = 1_700_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/not-yet/laneway.db"  # the directory is created on open
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START)


@pytest.fixture
async def db(db_url: str, clock: ManualClock) -> AsyncIterator[Database]:
    database = await Database.open(db_url, clock=clock)
    # The PostgreSQL database is shared by the session: start every test from empty tables.
    async with database.engine.begin() as conn:
        await conn.execute(text("DELETE FROM api_keys"))
        await conn.execute(text("DELETE FROM backends"))
    try:
        yield database
    finally:
        await database.aclose()


# --- URLs ---------------------------------------------------------------------------------------


def test_urls_map_to_async_drivers() -> None:
    assert to_async_url("sqlite:///var/lib/x.db") == "sqlite+aiosqlite:///var/lib/x.db"
    assert to_async_url("sqlite:////abs/x.db") == "sqlite+aiosqlite:////abs/x.db"
    assert to_async_url("sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert to_async_url("postgresql://u:pw@h:5433/db") == "postgresql+asyncpg://u:pw@h:5433/db"
    assert to_async_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert redact_url("postgresql://u:s3cret@h/db") == "postgresql://u:***@h/db"
    with pytest.raises(ConfigError, match=r"storage\.database_url"):
        to_async_url("mysql://u@h/db")
    with pytest.raises(ConfigError, match=r"storage\.database_url"):
        to_async_url("postgresql+psycopg2://u@h/db")


# --- migrations ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_migrations_are_idempotent_and_reach_head(db_url: str) -> None:
    await migrate(db_url)
    await migrate(db_url)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    assert version == [head]
    assert {"backends", "api_keys", "alembic_version"} <= tables


@pytest.mark.anyio
async def test_hand_written_migration_matches_the_models(db_url: str) -> None:
    await migrate(db_url)
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()
    assert diff == []


@pytest.mark.anyio
async def test_sqlite_creates_its_directory_and_runs_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "laneway.db"
    async with await Database.open(f"sqlite:///{path}") as database, database.engine.connect() as conn:
        mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
    assert path.exists()
    assert mode == "wal"


@pytest.mark.anyio
async def test_unreachable_postgres_is_one_clear_error_without_the_password() -> None:
    url = "postgresql://postgres:hunter2@127.0.0.1:1/laneway"
    with pytest.raises(DatabaseUnavailable) as info:
        await Database.open(url)
    message = info.value.message
    assert "postgresql://postgres:***@127.0.0.1:1/laneway" in message
    assert "hunter2" not in message
    assert "check that PostgreSQL is running" in message
    assert "\n" not in message


@pytest.mark.anyio
async def test_missing_postgres_database_is_reported_as_unavailable(pg_url: str) -> None:
    url = pg_url.rsplit("/", 1)[0] + "/laneway_no_such_database"
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        await Database.open(url)


# --- backends -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_backends_add_get_list_remove(db: Database, clock: ManualClock) -> None:
    cfg = BackendConfig(
        provider="openai",
        base_url="https://api.example.com/v1/",
        api_key_env="EXAMPLE_KEY",
        models=["gpt-4o-mini"],
        allow=["gpt-*"],
        timeout=30,
        weight=50,
    )
    stored = await db.backends.add("oai", cfg)
    assert stored.name == "oai"
    assert stored.created_at == datetime.fromtimestamp(START, UTC)
    assert dict(stored.options) == {"allow": ["gpt-*"], "timeout": 30.0, "weight": 50.0}
    await db.backends.add("gpu-1", BackendConfig(provider="ollama", base_url="http://10.0.0.5:11434"))

    got = await db.backends.get("oai")
    assert got is not None
    assert got.config == cfg  # rebuilt from the row, exactly what was given
    assert got.config.base_url == "https://api.example.com/v1"
    assert got.created_at.tzinfo is not None
    assert await db.backends.get("nope") is None
    assert [b.name for b in await db.backends.list()] == ["gpu-1", "oai"]

    assert await db.backends.remove("oai") is True
    assert await db.backends.remove("oai") is False
    assert [b.name for b in await db.backends.list()] == ["gpu-1"]


@pytest.mark.anyio
async def test_duplicate_backend_name_is_refused(db: Database) -> None:
    cfg = BackendConfig(provider="ollama", base_url="http://127.0.0.1:11434")
    await db.backends.add("gpu-1", cfg)
    with pytest.raises(AlreadyExists, match="gpu-1"):
        await db.backends.add("gpu-1", BackendConfig(provider="openai", base_url="http://x"))
    only = await db.backends.list()
    assert [(b.name, b.provider) for b in only] == [("gpu-1", "ollama")]


@pytest.mark.anyio
async def test_backend_secrets_and_bad_names_are_refused(db: Database) -> None:
    with pytest.raises(InvalidValue, match="api_key_env"):
        await db.backends.add("oai", BackendConfig(provider="openai", base_url="http://x", api_key="sk-123"))
    with pytest.raises(InvalidValue, match="not a valid backend name"):
        await db.backends.add("no spaces", BackendConfig(provider="openai", base_url="http://x"))
    with pytest.raises(InvalidValue, match="api_key_env"):
        await db.backends.add("oai", BackendConfig(provider="openai", base_url="http://x", api_key_env="A B"))
    assert await db.backends.list() == []


# --- keys ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_key_secret_is_returned_once_and_only_its_hash_is_stored(db: Database) -> None:
    key, secret = await db.keys.create("ci")
    assert secret.startswith("lw-")
    assert len(secret) >= 40
    assert key.id.startswith("key_")
    assert key.caller == "ci"
    assert key.key_hash == hash_key(secret)
    assert key.prefix == secret[:12]

    async with db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM api_keys"))).all()
    cells = [str(cell) for row in rows for cell in row]
    assert hash_key(secret) in cells
    assert not any(secret in cell for cell in cells)
    assert not any(secret[12:] in cell for cell in cells)  # nothing past the display prefix


@pytest.mark.anyio
async def test_revoked_keys_leave_active_hashes(db: Database, clock: ManualClock) -> None:
    ci, ci_secret = await db.keys.create("ci")
    clock.advance(1)
    _, bob_secret = await db.keys.create("bob", caller="team-a")
    clock.advance(1)
    _, eve_secret = await db.keys.create("eve")
    assert await db.keys.active_hashes() == {
        hash_key(ci_secret): "ci",
        hash_key(bob_secret): "team-a",
        hash_key(eve_secret): "eve",
    }

    assert await db.keys.revoke(ci.id) is True  # by id
    assert await db.keys.revoke("eve") is True  # by name
    assert await db.keys.revoke("eve") is False  # already revoked
    assert await db.keys.revoke("nobody") is False
    assert await db.keys.active_hashes() == {hash_key(bob_secret): "team-a"}

    assert [k.name for k in await db.keys.list()] == ["bob"]
    everything = await db.keys.list(include_revoked=True)
    assert [(k.name, k.active) for k in everything] == [("ci", False), ("bob", True), ("eve", False)]
    assert everything[0].revoked_at == datetime.fromtimestamp(START + 2, UTC)


@pytest.mark.anyio
async def test_a_name_is_unique_among_active_keys_only(db: Database) -> None:
    await db.keys.create("ci")
    with pytest.raises(AlreadyExists, match="ci"):
        await db.keys.create("ci")
    assert await db.keys.revoke("ci")
    _, secret = await db.keys.create("ci")  # the name is free again once revoked
    assert await db.keys.active_hashes() == {hash_key(secret): "ci"}
    with pytest.raises(InvalidValue):
        await db.keys.create("bad name")
    with pytest.raises(InvalidValue):
        await db.keys.create("ok", caller="bad caller")


@pytest.mark.anyio
async def test_touch_records_last_use(db: Database, clock: ManualClock) -> None:
    key, secret = await db.keys.create("ci")
    assert key.last_used_at is None
    clock.advance(60)
    await db.keys.touch([hash_key(secret), "sha256:unknown"])
    await db.keys.touch([])
    (listed,) = await db.keys.list()
    assert listed.last_used_at == datetime.fromtimestamp(START + 60, UTC)


@pytest.mark.anyio
async def test_a_cancelled_caller_leaves_at_once_and_the_write_stays_whole(db: Database) -> None:
    """Cancel key creation at every point the caller can be interrupted. The caller's cancellation
    propagates; the transaction it started is never cut in half (it finishes in its own task), so
    every key exists whole or not at all, no connection is left checked out, and the database
    keeps working."""
    returned: dict[str, str] = {}

    async def create(name: str) -> None:
        _, secret = await db.keys.create(name)
        returned[name] = secret

    cancelled = left_running = 0
    for step in range(12):
        task = asyncio.create_task(create(f"k{step}"))
        for _ in range(step):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled += 1
            left_running = max(left_running, db.statistics().in_flight)
    assert cancelled > 0
    assert left_running > 0  # callers were gone while their writes were still running

    await db.wait_idle()
    active = await db.keys.active_hashes()
    assert "k0" not in active.values()  # cancelled before it started: nothing was written
    for name, secret in returned.items():
        assert active[hash_key(secret)] == name
    listed = await db.keys.list()
    assert {k.name for k in listed} == set(active.values())
    assert all(k.key_hash in active for k in listed)
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    key, _ = await db.keys.create("after")
    assert await db.keys.revoke(key.id)


# --- runtime state ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_memory_store_basics(clock: ManualClock) -> None:
    store: KeyValueStore = MemoryStore(clock)
    assert await store.get("a") is None
    await store.set("lane:1", b"one")
    await store.set("lane:2", b"two")
    await store.set("signal:x", b"s")
    assert await store.get("lane:1") == b"one"
    assert await store.scan("lane:") == {"lane:1": b"one", "lane:2": b"two"}
    assert await store.delete("lane:1") is True
    assert await store.delete("lane:1") is False
    assert await store.scan("") == {"lane:2": b"two", "signal:x": b"s"}
    with pytest.raises(ValueError, match="ttl"):
        await store.set("x", b"", ttl=0)
    await store.aclose()


@pytest.mark.anyio
async def test_memory_store_honours_ttl_on_the_injected_clock(clock: ManualClock) -> None:
    store = MemoryStore(clock)
    await store.set("short", b"1", ttl=10)
    await store.set("forever", b"2")
    await store.set("renewed", b"3", ttl=10)
    await store.set("made-permanent", b"4", ttl=10)
    clock.advance(9.5)
    assert await store.get("short") == b"1"
    await store.set("renewed", b"3", ttl=10)  # a new TTL replaces the old one
    await store.set("made-permanent", b"4")  # no TTL: kept until deleted
    clock.advance(0.5)  # the deadline itself is already expired
    assert await store.get("short") is None
    assert await store.delete("short") is False
    assert await store.scan("") == {"forever": b"2", "made-permanent": b"4", "renewed": b"3"}
    clock.advance(10)
    assert await store.scan("") == {"forever": b"2", "made-permanent": b"4"}


@pytest.mark.anyio
async def test_memory_store_sweeps_expired_entries_nobody_reads(clock: ManualClock) -> None:
    store = MemoryStore(clock)
    for i in range(1000):
        await store.set(f"k{i}", b"x", ttl=1)
    for _ in range(300):
        await store.set("hot", b"x", ttl=60)  # overwrites leave stale deadlines; they are compacted
    clock.advance(2)
    await store.set("new", b"y")
    stats = store.statistics()
    assert stats.keys == 2
    assert stats.expiring <= 64 or stats.expiring <= 2 * stats.keys


@pytest.mark.anyio
async def test_memory_store_stays_consistent_when_cancelled_mid_sequence(clock: ManualClock) -> None:
    store = MemoryStore(clock)

    async def writer(i: int) -> None:
        await store.set(f"k{i}", b"a", ttl=5)
        await asyncio.sleep(0)
        await store.set(f"k{i}", b"b")
        await asyncio.sleep(0)
        await store.delete(f"k{i}")

    tasks = [asyncio.create_task(writer(i)) for i in range(90)]
    for step in range(3):
        await asyncio.sleep(0)
        for i, task in enumerate(tasks):
            if i % 3 == step:
                task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            pass

    seen = await store.scan("k")
    assert set(seen.values()) <= {b"a", b"b"}
    assert store.statistics().keys == len(seen)
    clock.advance(5)
    after = await store.scan("k")
    assert set(after.values()) <= {b"b"}  # whatever was left with a TTL expired on time
    assert {k for k, v in seen.items() if v == b"b"} == set(after)
    await store.set("sweep", b"")
    assert store.statistics().keys == len(after) + 1
    assert repr(store) == f"<MemoryStore: {len(after) + 1} keys>"
