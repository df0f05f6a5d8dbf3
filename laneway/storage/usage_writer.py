"""Writing usage records: ``BatchWriter`` (a bounded buffer, drained in batches off the request
path) over the ``usage_records`` table.

    recorder = UsageRecorder(db.usage.add_many, clock)
    task = asyncio.create_task(recorder.run())
    recorder.record(UsageRecord(...))          # per request, never blocks, never raises
    ...
    task.cancel(); await recorder.aclose()     # writes what is left
"""

from __future__ import annotations

from typing import Any

from laneway.clock import Clock
from laneway.storage.batch_writer import BatchWrite, BatchWriter, WriterStatistics
from laneway.usage import UsageRecord

UsageStatistics = WriterStatistics
# Writes one batch, in one statement; raises on failure. ``Database.usage.add_many`` is one.
UsageWriter = BatchWrite[UsageRecord]


class UsageRecorder(BatchWriter[UsageRecord]):
    """The usage records' writer (``BatchWriter``; its log lines say ``usage``)."""

    def __init__(self, write: UsageWriter, clock: Clock, **options: Any) -> None:
        super().__init__(write, clock, name="usage", **options)
