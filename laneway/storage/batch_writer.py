"""Writing records to the database off the request path: a bounded buffer, drained in batches.

Recording is on the request path and must cost nothing there: ``BatchWriter.record`` is a
synchronous append to a bounded buffer. Writing is off the request path: ``run()`` drains the
buffer in batches, one multi-row INSERT per batch, so the database sees a handful of statements
a second however busy the gateway is, and a database that is slow or away never slows a request.
Usage rows (``usage_writer.UsageRecorder``) and failover records go this way.

The buffer is bounded (``max_buffered``). A database that stays away long enough loses the
*oldest* records, counted in ``statistics().dropped`` (``laneway_records_dropped_total`` on
``/metrics``): memory stays flat and the newest records, the ones an operator is about to look
at, are kept. An outage is logged once when it begins (the first failed write, the first record
dropped) and once when the writer has caught up again, with what it cost: never per record.

    writer = BatchWriter(db.usage.add_many, clock, name="usage")
    task = asyncio.create_task(writer.run())
    writer.record(item)                        # per request, never blocks, never raises
    ...
    task.cancel(); await writer.aclose()       # writes what is left
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from laneway.clock import Clock, within
from laneway.errors import LanewayError
from laneway.storage.errors import DatabaseUnavailable, StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Writes one batch, in one statement; raises on failure. ``Database.usage.add_many`` is one.
BatchWrite = Callable[[Sequence[T]], Awaitable[object]]


@dataclass(frozen=True)
class WriterStatistics:
    buffered: int  # waiting to be written, including a batch being written right now
    written: int
    dropped: int  # given up: the oldest when the buffer was full, a refused batch, the rest at shutdown
    failed_writes: int


class BatchWriter(Generic[T]):
    """A bounded buffer of records and the loop that writes it to the database in batches.

    A batch whose write fails goes back to the head of the buffer and is tried again after
    ``flush_interval`` (no tighter loop against a database that is down). A batch the database
    *refuses* (a ``StorageError`` that is not ``DatabaseUnavailable``: it is the data, not the
    connection) is retried ``max_refusals`` times, then dropped and counted, so one bad record
    cannot stop recording for good. ``name`` says which records in the log.
    """

    def __init__(
        self,
        write: BatchWrite[T],
        clock: Clock,
        *,
        name: str = "records",
        flush_interval: float = 1.0,
        batch_size: int = 500,
        max_buffered: int = 100_000,
        max_refusals: int = 3,
    ) -> None:
        if flush_interval <= 0 or batch_size < 1 or max_buffered < batch_size:
            raise ValueError("need flush_interval > 0 and 1 <= batch_size <= max_buffered")
        self._write = write
        self._clock = clock
        self.name = name
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_buffered = max_buffered
        self.max_refusals = max_refusals
        self._buffer: deque[T] = deque()
        self._full = asyncio.Event()  # set when a whole batch waits: write it now, not at the tick
        self._writing: set[asyncio.Future[object]] = set()  # writes running, each settles itself
        self._writing_count = 0  # records in those writes
        self._written = 0
        self._dropped = 0
        self._failed_writes = 0
        # The current outage (or overflow), said once when it begins and once when it is over:
        self._failing = 0  # consecutive failed writes
        self._failed_in_episode = 0  # failed writes since the writer last caught up
        self._dropped_in_episode = 0  # records dropped since the writer last caught up
        self._refusals = 0  # consecutive refusals of the batch at the head

    # -- the request path --------------------------------------------------------------------

    def record(self, item: T) -> None:
        """Queue one record. Synchronous, O(1); when the buffer is full the oldest record goes.
        Call it from the event loop's thread (the buffer has no lock: it needs none there)."""
        if len(self._buffer) >= self.max_buffered:
            self._buffer.popleft()
            self._drop(1, "the buffer is full")
        self._buffer.append(item)
        if len(self._buffer) >= self.batch_size and not self._full.is_set():
            try:
                self._full.set()
            except RuntimeError:  # the loop that waits on it is closed: the tick is all we lose
                pass

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            buffered=len(self._buffer) + self._writing_count,
            written=self._written,
            dropped=self._dropped,
            failed_writes=self._failed_writes,
        )

    # -- writing -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: write whole batches as soon as they wait, and everything else every
        ``flush_interval`` (so a quiet gateway's records reach the database within about one
        interval). Cancel it, then call ``aclose`` to write what is left."""
        while True:
            try:
                await within(self._clock, self.flush_interval, self._full.wait())
                whole_batches_only = True
            except TimeoutError:
                whole_batches_only = False
            self._full.clear()
            if not await self._drain(whole_batches_only):
                await self._clock.sleep(self.flush_interval)  # the database is away: no hot loop
            if len(self._buffer) >= self.batch_size:
                self._full.set()

    async def flush(self) -> bool:
        """Wait for the writes already running, then write everything waiting now, in batches:
        what was recorded before the call is in the database when it returns True (a reader
        that flushes first sees its own replica's newest records). False if a write failed
        meanwhile (its batch is kept for the next try)."""
        failed = self._failed_writes
        await self._settled()
        await self._drain(whole_batches_only=False)
        await self._settled()  # a batch ``run`` took meanwhile is written too (or back in the buffer)
        return self._failed_writes == failed

    async def _settled(self) -> None:
        """Wait for the writes running now (each puts its batch back if it fails)."""
        while self._writing:
            await asyncio.wait(set(self._writing))

    async def aclose(self) -> None:
        """Wait for a write still running (its caller may have been cancelled), then write what
        is left. What cannot be written now is counted as dropped and logged: nothing raises on
        shutdown."""
        if not await self.flush() and self._buffer:
            lost = len(self._buffer)
            self._buffer.clear()
            self._dropped += lost
            log.error("%s: %d records could not be written before shutdown", self.name, lost)

    async def _drain(self, whole_batches_only: bool) -> bool:
        minimum = self.batch_size if whole_batches_only else 1
        while len(self._buffer) >= minimum:
            count = min(self.batch_size, len(self._buffer))
            batch = [self._buffer.popleft() for _ in range(count)]
            if not await self._write_batch(batch):
                return False
        return True

    async def _write_batch(self, batch: list[T]) -> bool:
        """Write one batch. The write runs in its own task and settles itself (``_settle``), so
        a cancelled caller neither loses the batch nor writes it twice."""
        try:
            write: asyncio.Future[object] = asyncio.ensure_future(self._write(batch))
        except Exception as exc:  # a writer that fails before it is even awaited fails like any other
            write = asyncio.get_running_loop().create_future()
            write.set_exception(exc)
        self._writing.add(write)
        self._writing_count += len(batch)
        write.add_done_callback(lambda done: self._settle(batch, done))
        await asyncio.wait([write])  # waits for it; our own cancellation leaves it running
        return not write.cancelled() and write.exception() is None

    def _settle(self, batch: list[T], done: asyncio.Future[object]) -> None:
        self._writing.discard(done)
        self._writing_count -= len(batch)
        error = None if done.cancelled() else done.exception()
        if not done.cancelled() and error is None:
            self._written += len(batch)
            self._refusals = 0
            self._failing = 0
            if len(self._buffer) < self.batch_size:
                self._caught_up()
            return
        self._failed_writes += 1
        self._failed_in_episode += 1
        self._failing += 1
        if _refused(error):
            self._refusals += 1
            if self._refusals >= self.max_refusals:
                self._refusals = 0
                log.error(
                    "%s: the database refused a batch %d times; dropping its %d records: %s",
                    self.name,
                    self.max_refusals,
                    len(batch),
                    _describe(error),
                )
                self._drop(len(batch), "the database refused them")
                return
        # Back to the head, in order; then the bound holds again by dropping the oldest.
        self._buffer.extendleft(reversed(batch))
        excess = len(self._buffer) - self.max_buffered
        for _ in range(excess):
            self._buffer.popleft()
        if excess > 0:
            self._drop(excess, "the buffer is full")
        if self._failing == 1:
            log.warning(
                "%s: could not write %d records, will retry: %s", self.name, len(batch), _describe(error)
            )
        else:
            log.debug("%s: write failed again (%d in a row): %s", self.name, self._failing, _describe(error))

    def _drop(self, count: int, why: str) -> None:
        """Count ``count`` records given up; the first of an episode is said in the log."""
        if not self._dropped_in_episode:
            log.warning(
                "%s: dropping records (%s, %d at most are kept) until the database takes them again; "
                "counted in laneway_records_dropped_total",
                self.name,
                why,
                self.max_buffered,
            )
        self._dropped += count
        self._dropped_in_episode += count

    def _caught_up(self) -> None:
        """Less than a batch waits after a successful write: an outage (or overflow) is over.
        Say once what it cost, and start counting the next one afresh."""
        if self._failed_in_episode or self._dropped_in_episode:
            log.warning(
                "%s: writing works again and the backlog is written (%d failed writes, %d records "
                "dropped meanwhile)",
                self.name,
                self._failed_in_episode,
                self._dropped_in_episode,
            )
        self._failed_in_episode = self._dropped_in_episode = 0

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<{type(self).__name__}: {s.buffered} buffered, {s.written} written, {s.dropped} dropped, "
            f"{s.failed_writes} failed writes>"
        )


def _refused(error: BaseException | None) -> bool:
    """The database answered and said no (the data is the problem), as opposed to being away."""
    return isinstance(error, StorageError) and not isinstance(error, DatabaseUnavailable)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "cancelled"
    return error.message if isinstance(error, LanewayError) else f"{type(error).__name__}: {error}"
