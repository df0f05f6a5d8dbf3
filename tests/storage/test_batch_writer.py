"""The batch writer's account of an outage (``laneway.storage.batch_writer``; its buffering and
batching are tested through ``UsageRecorder`` in ``test_usage.py``): a database away for many
writes and many dropped records is said once when it begins (the first failed write, the first
record dropped) and once when the backlog is written, with what it cost, never per record or per
write; ``flush`` returns once what was recorded before it is written, a write already running
included; and what is left at shutdown is counted as dropped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from laneway.clock import ManualClock
from laneway.storage import DatabaseUnavailable
from laneway.storage.batch_writer import BatchWriter

pytestmark = pytest.mark.anyio
LOGGER = "laneway.storage.batch_writer"


class Database:
    """A writer that is away while ``away`` is set, and can hang until released."""

    def __init__(self) -> None:
        self.away = False
        self.gate: asyncio.Event | None = None
        self.rows: list[int] = []

    async def __call__(self, batch: Sequence[int]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.away:
            raise DatabaseUnavailable("cannot use the database at db:5432: connection refused")
        self.rows.extend(batch)


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


async def test_an_outage_is_said_once_when_it_begins_and_once_when_it_is_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    db = Database()
    writer = BatchWriter(db, ManualClock(), name="usage", batch_size=10, max_buffered=50)
    db.away = True
    for i in range(200):  # 150 dropped, one by one, on the request path
        writer.record(i)
        if i % 10 == 0:
            assert await writer.flush() is False  # 20 failed writes
    stats = writer.statistics()
    assert (stats.buffered, stats.dropped, stats.written, stats.failed_writes) == (50, 150, 0, 20)
    began = said(caplog)
    assert len(began) == 2, began
    assert began[0].startswith("usage: could not write 1 records, will retry: cannot use the database")
    assert began[1].startswith("usage: dropping records (the buffer is full, 50 at most are kept)")

    db.away = False
    assert await writer.flush() is True
    assert db.rows == list(range(150, 200))  # the newest 50, in order
    over = said(caplog)[2:]
    assert over == [
        "usage: writing works again and the backlog is written "
        "(20 failed writes, 150 records dropped meanwhile)"
    ]

    db.away = True  # a second outage is a new story, said again
    writer.record(200)
    assert await writer.flush() is False
    db.away = False
    assert await writer.flush() is True
    assert said(caplog)[3:] == [
        "usage: could not write 1 records, will retry: "
        "cannot use the database at db:5432: connection refused",
        "usage: writing works again and the backlog is written "
        "(1 failed writes, 0 records dropped meanwhile)",
    ]


async def test_flush_returns_once_a_write_already_running_is_done() -> None:
    db = Database()
    db.gate = asyncio.Event()
    writer = BatchWriter(db, ManualClock(), batch_size=2)
    running = asyncio.create_task(writer.run())
    for i in range(2):
        writer.record(i)  # a whole batch: run() writes it at once, and the write hangs
    for _ in range(100):
        await asyncio.sleep(0)
    assert writer.statistics().buffered == 2
    writer.record(2)
    flushed = asyncio.create_task(writer.flush())
    for _ in range(100):
        await asyncio.sleep(0)
    assert not flushed.done()  # it waits for the write run() began
    db.gate.set()
    assert await flushed is True
    assert sorted(db.rows) == [0, 1, 2]
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await writer.aclose()


async def test_what_cannot_be_written_at_shutdown_is_counted_as_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = Database()
    db.away = True
    writer = BatchWriter(db, ManualClock(), name="failovers", batch_size=2)
    for i in range(3):
        writer.record(i)
    await writer.aclose()
    stats = writer.statistics()
    assert (stats.buffered, stats.dropped, stats.written) == (0, 3, 0)
    assert "failovers: 3 records could not be written before shutdown" in said(caplog)
