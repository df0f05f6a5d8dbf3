"""Stored responses (``laneway.storage.responses_repo``) on SQLite and the real PostgreSQL: a
response round-trips with its conversation, belongs to its caller alone, expires after the
retention by the injected clock (never served after, swept by the writes), and what one
database handle wrote another reads (two replicas on one PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from laneway.clock import ManualClock
from laneway.storage import Database
from laneway.storage.models import ResponseRow
from laneway.storage.responses_repo import ResponseStore

DAY = 86400.0
QUESTION = [{"role": "user", "content": "What is the weather?"}]
ANSWER = [{"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function"}]}]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/laneway.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await Database.open(db_url)
    async with database.engine.begin() as conn:
        await conn.execute(text("DELETE FROM responses"))  # the PostgreSQL database is shared
    try:
        yield database
    finally:
        await database.aclose()


def response(rid: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"id": rid, "object": "response", "model": model, "output": [], "status": "completed"}


async def rows(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(ResponseRow))).scalar_one())


@pytest.mark.anyio
async def test_a_response_round_trips_with_its_conversation(db: Database, clock: ManualClock) -> None:
    store = ResponseStore(db.responses, clock, retention=30 * DAY)
    await store.save(response("resp_1"), "alice", QUESTION, ANSWER)
    stored = await store.load("resp_1", "alice")
    assert stored is not None
    assert stored.response == response("resp_1")
    assert stored.model == "gpt-4o-mini"
    assert stored.conversation == [*QUESTION, *ANSWER]
    assert stored.created_at.timestamp() == clock.now()
    assert stored.expires_at.timestamp() == clock.now() + 30 * DAY


@pytest.mark.anyio
async def test_a_response_is_its_callers_alone(db: Database, clock: ManualClock) -> None:
    store = ResponseStore(db.responses, clock, retention=DAY)
    await store.save(response("resp_2"), "alice", QUESTION, ANSWER)
    assert await store.load("resp_2", "bob") is None
    assert await store.delete("resp_2", "bob") is False
    assert await store.load("resp_2", "alice") is not None
    assert await store.delete("resp_2", "alice") is True
    assert await store.load("resp_2", "alice") is None
    assert await store.delete("resp_2", "alice") is False


@pytest.mark.anyio
async def test_expired_responses_are_not_served_and_are_swept_by_a_later_write(
    db: Database, clock: ManualClock
) -> None:
    store = ResponseStore(db.responses, clock, retention=DAY, sweep_every=3600)
    await store.save(response("resp_old"), "alice", QUESTION, ANSWER)
    clock.advance(DAY - 1)
    assert await store.load("resp_old", "alice") is not None
    clock.advance(1)
    assert await store.load("resp_old", "alice") is None  # at expires_at: gone for readers
    assert await rows(db) == 1  # ... and still on disk until a write sweeps
    await store.save(response("resp_new"), "alice", QUESTION, ANSWER)
    assert await rows(db) == 1
    assert await store.load("resp_new", "alice") is not None


@pytest.mark.anyio
async def test_writes_sweep_at_most_once_per_interval(db: Database, clock: ManualClock) -> None:
    store = ResponseStore(db.responses, clock, retention=10, sweep_every=100)
    await store.save(response("resp_a"), "alice", QUESTION, ANSWER)  # sweeps (the first write)
    clock.advance(50)
    await store.save(response("resp_b"), "alice", QUESTION, ANSWER)  # too soon: resp_a stays
    assert await rows(db) == 2
    clock.advance(50)
    await store.save(response("resp_c"), "alice", QUESTION, ANSWER)  # sweeps resp_a and resp_b
    assert await rows(db) == 1


@pytest.mark.anyio
async def test_what_one_replica_stores_another_reads(db: Database, db_url: str, clock: ManualClock) -> None:
    other = await Database.open(db_url)
    try:
        await ResponseStore(db.responses, clock, retention=DAY).save(
            response("resp_x"), "alice", QUESTION, ANSWER
        )
        stored = await ResponseStore(other.responses, clock, retention=DAY).load("resp_x", "alice")
        assert stored is not None
        assert stored.conversation == [*QUESTION, *ANSWER]
    finally:
        await other.aclose()
