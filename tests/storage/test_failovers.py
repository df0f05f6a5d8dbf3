"""Failover records in the database (``laneway.storage.failovers_repo``) on SQLite and the real
PostgreSQL: a record round-trips with its attempts and its replica, newest first with a count, one
replica's alone when asked; a batch written twice adds nothing; records past the retention are not
shown and are swept by the writes (at most once per interval, by the injected clock); odd values
cannot make the database refuse a batch; what one database handle wrote another reads (two
replicas on one database). And migration 0006 on a database that has usage rows: they read as
served by an unknown replica."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, select, text

from laneway.clock import ManualClock
from laneway.failovers import Attempt, FailoverRecord
from laneway.storage import Database
from laneway.storage.db import alembic_config, create_engine
from laneway.storage.failovers_repo import FailoverStore
from laneway.storage.models import FailoverRow

pytestmark = pytest.mark.anyio

START = 1_700_000_000.0
DAY = 86400.0
BAD = "cloud/openai/bad/chat/gpt-4o-mini"
GOOD = "cloud/openai/good/chat/gpt-4o-mini"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/laneway.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START)


@pytest.fixture
async def db(db_url: str, clock: ManualClock) -> AsyncIterator[Database]:
    database = await Database.open(db_url, clock=clock)
    async with database.engine.begin() as conn:
        await conn.execute(text("DELETE FROM failover_records"))  # the PostgreSQL database is shared
    try:
        yield database
    finally:
        await database.aclose()


def record(i: int, *, at: float = START, replica: str = "r1", **fields: Any) -> FailoverRecord:
    values: dict[str, Any] = {
        "request_id": f"req-{i}",
        "run_id": "run-7" if i % 2 else None,
        "caller": "app",
        "requested": "smart",
        "operation": "chat",
        "started_at": at + i,
        "attempts": [
            Attempt(1, BAD, "bad", "failed", "backend 'bad' answered 500", "bad_gateway", 500, 0.001, 0.25),
            Attempt(2, GOOD, "good", "served", elapsed=0.5),
        ],
        "outcome": "served",
        "served_by": GOOD,
        "replica": replica,
    }
    values.update(fields)
    return FailoverRecord(**values)


async def rows(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(FailoverRow))).scalar_one())


async def test_records_round_trip_newest_first_with_their_replica(db: Database, clock: ManualClock) -> None:
    store = FailoverStore(db.failovers, clock, retention=7 * DAY)
    prompted = record(
        2, replica="r2", outcome="failed", served_by=None, prompt=[{"role": "user", "content": "hi"}]
    )
    written = [record(0), record(1), prompted]
    assert await store.write(written) == 3

    newest, kept = await store.recent(10)
    assert kept == 3
    assert newest == list(reversed(written))  # every field back, the attempts as Attempts
    assert newest[0].as_dict()["replica"] == "r2"
    assert "prompt" not in newest[1].as_dict()  # none recorded: none shown
    assert newest[0].as_dict()["prompt"] == [{"role": "user", "content": "hi"}]

    limited, kept = await store.recent(1)
    assert ([r.request_id for r in limited], kept) == (["req-2"], 3)
    mine, kept = await store.recent(10, replica="r1")
    assert ([r.request_id for r in mine], kept) == (["req-1", "req-0"], 2)
    assert await store.recent(10, replica="nobody") == ([], 0)


async def test_a_batch_written_twice_adds_nothing(db: Database, clock: ManualClock) -> None:
    """The writer sends a batch again when its answer was lost: the records are there once."""
    batch = [record(0), record(1)]
    await db.failovers.add_many(batch)
    await db.failovers.add_many([*batch, record(2)])
    assert await rows(db) == 3
    assert await db.failovers.add_many([]) == 0


async def test_records_past_the_retention_are_not_shown_and_are_swept_by_the_writes(
    db: Database, clock: ManualClock
) -> None:
    store = FailoverStore(db.failovers, clock, retention=7 * DAY, sweep_every=60)
    # The write sweeps before it inserts: the record already too old stays until the next sweep,
    # but is never shown.
    await store.write([record(0, at=START - 8 * DAY), record(1, at=START - DAY)])
    assert await rows(db) == 2
    shown, kept = await store.recent(10)
    assert ([r.request_id for r in shown], kept) == (["req-1"], 1)

    clock.advance(6 * DAY + 2)  # req-1 (started at START - DAY + 1) is past the retention: not shown
    assert await store.recent(10) == ([], 0)
    await store.write([record(2, at=clock.now())])  # the last sweep is days old: this one sweeps
    assert await rows(db) == 1
    await store.write([record(3, at=clock.now() - 30 * DAY)])  # swept a moment ago: not again yet
    assert await rows(db) == 2
    clock.advance(60)
    await store.write([])
    assert await rows(db) == 1


async def test_odd_values_cannot_make_the_database_refuse_a_batch(db: Database, clock: ManualClock) -> None:
    odd = record(
        0,
        requested="x" * 10_000,  # a client's 10 kB model name
        caller="nul\x00caller",  # PostgreSQL's text takes no NUL
        attempts=[Attempt(1, BAD, "bad", "failed", error="the upstream said \x00 " + "y" * 100_000)],
        prompt={"messages": [{"content": "a\x00b"}]},
    )
    await db.failovers.add_many([odd, record(1)])
    (_, oldest), kept = await db.failovers.page(10, datetime.fromtimestamp(0, UTC))
    assert kept == 2
    assert oldest.requested == "x" * 255
    assert oldest.caller == "nulcaller"
    assert oldest.attempts[0].error is not None
    assert oldest.attempts[0].error.startswith("the upstream said  yyy")
    assert oldest.prompt == {"messages": [{"content": "ab"}]}


async def test_what_one_replica_writes_another_reads(db: Database, db_url: str, clock: ManualClock) -> None:
    other = await Database.open(db_url, clock=clock)
    try:
        await FailoverStore(db.failovers, clock, retention=DAY).write([record(0, replica="r1")])
        (seen,), kept = await FailoverStore(other.failovers, clock, retention=DAY).recent(10)
    finally:
        await other.aclose()
    assert (seen.request_id, seen.replica, kept) == ("req-0", "r1", 1)


async def test_migration_0006_keeps_usage_rows_and_says_their_replica_is_unknown(fresh_url: str) -> None:
    """A database at 0005 with a usage row, upgraded: the row is kept, with replica ''; the
    failover table is there; and it goes back down cleanly."""
    engine = create_engine(fresh_url)

    def run(sync: Any, *step: str) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = sync
        getattr(command, step[0])(cfg, step[1])

    try:
        async with engine.begin() as conn:
            await conn.run_sync(run, "upgrade", "0005")
            await conn.execute(
                text(
                    "INSERT INTO usage_records (at, caller, requested, lane, backend, model, request_id,"
                    " attempts, streamed) VALUES (:at, 'ci', 'smart', 'l', 'b', 'm', 'req-old', 1, false)"
                ),
                {"at": datetime.fromtimestamp(START, UTC)},
            )
            await conn.run_sync(run, "upgrade", "head")
            replicas = (await conn.execute(text("SELECT replica FROM usage_records"))).scalars().all()
            assert replicas == [""]
            assert (await conn.execute(text("SELECT count(*) FROM failover_records"))).scalar_one() == 0
            await conn.run_sync(run, "downgrade", "0005")
            assert (await conn.execute(text("SELECT count(*) FROM usage_records"))).scalar_one() == 1
            await conn.run_sync(run, "upgrade", "head")
    finally:
        await engine.dispose()
