"""Failover records in the database: the ``failover_records`` table (``FailoverRepo``) and the
retention rule over it (``FailoverStore``).

Every replica writes its records here in batches, off the request path (the gateway's
``BatchWriter`` calls ``FailoverStore.write``), so ``GET /admin/failovers`` on any replica shows
the whole cluster's, each naming the replica that handled the request, and they outlive a
restart. Records live ``routing.failover_retention`` seconds: older ones are never shown, and the
writes delete them (at most once per ``sweep_every``), so the table holds one retention period
of failovers.

A record carries its own id, and inserting an id that is already there does nothing: a batch
whose write succeeded but whose answer was lost (the connection cut at the commit) and that the
writer therefore sends again is not counted twice. Values are made storable before they are sent
(strings clipped to their columns, NUL characters removed, which PostgreSQL's text refuses): a
batch holds many requests' records, and one odd field must not make the database refuse them all.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Insert, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from laneway.clock import Clock
from laneway.failovers import Attempt, FailoverRecord
from laneway.storage.errors import StorageError
from laneway.storage.models import FailoverRow
from laneway.storage.repos import _Repo, _rowcount, _runs_to_completion
from laneway.storage.urls import is_sqlite

INSERT_ROWS = 1000  # rows per statement: 12 parameters each, under every dialect's limit
_TEXT_MAX = 255  # the String(255) columns
_SHORT_MAX = 32  # operation, outcome
_ATTEMPT_FIELDS = frozenset(f.name for f in fields(Attempt))


class FailoverRepo(_Repo):
    """The ``failover_records`` table. Times are given by the caller (``FailoverStore`` reads its
    clock)."""

    @_runs_to_completion
    async def add_many(self, records: Sequence[FailoverRecord]) -> int:
        """Insert ``records`` (ids already stored are skipped), in one transaction. Returns how
        many were given."""
        if not records:
            return 0
        rows = [_row(r) for r in records]
        try:
            async with self._session(write=True) as s:
                for i in range(0, len(rows), INSERT_ROWS):
                    await s.execute(self._insert_new(), rows[i : i + INSERT_ROWS])
        except IntegrityError as exc:
            raise StorageError(f"the database refused failover records: {exc.orig}") from None
        return len(rows)

    def _insert_new(self) -> Insert:
        """INSERT that skips an id already stored (SQLite and PostgreSQL spell it alike)."""
        if is_sqlite(self._url):
            return sqlite.insert(FailoverRow).on_conflict_do_nothing(index_elements=["id"])
        return postgresql.insert(FailoverRow).on_conflict_do_nothing(index_elements=["id"])

    @_runs_to_completion
    async def page(
        self, limit: int, since: datetime, replica: str | None = None
    ) -> tuple[builtins.list[FailoverRecord], int]:
        """The newest ``limit`` records started at ``since`` or later (of ``replica``, if given),
        newest first, and how many such records there are in all."""
        where = _where(since, replica)
        newest = (
            select(FailoverRow)
            .where(*where)
            .order_by(FailoverRow.started_at.desc(), FailoverRow.id.desc())
            .limit(max(limit, 0))
        )
        async with self._session() as s:
            rows = (await s.scalars(newest)).all()
            total = (
                await s.execute(select(func.count()).select_from(FailoverRow).where(*where))
            ).scalar_one()
        return [_record(r) for r in rows], int(total)

    @_runs_to_completion
    async def sweep(self, before: datetime) -> int:
        """Delete every record started before ``before``; how many went."""
        async with self._session(write=True) as s:
            return _rowcount(await s.execute(delete(FailoverRow).where(FailoverRow.started_at < before)))


class FailoverStore:
    """The failover records as the gateway uses them: ``routing.failover_retention`` (seconds)
    applied by the gateway's clock; records past it swept by the writes, at most once per
    ``sweep_every``."""

    def __init__(
        self, repo: FailoverRepo, clock: Clock, *, retention: float, sweep_every: float = 60.0
    ) -> None:
        self.repo = repo
        self.clock = clock
        self.retention = retention
        self.sweep_every = sweep_every
        self._swept_at: float | None = None

    def _cutoff(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), UTC) - timedelta(seconds=self.retention)

    async def write(self, batch: Sequence[FailoverRecord]) -> int:
        """Write one batch (the ``BatchWriter``'s writer), sweeping expired records first when
        the last sweep is ``sweep_every`` old. A failed sweep fails the write: the writer keeps
        the batch and tries both again."""
        now = self.clock.now()
        if self._swept_at is None or now - self._swept_at >= self.sweep_every:
            await self.repo.sweep(self._cutoff())
            self._swept_at = now
        return await self.repo.add_many(batch)

    async def recent(
        self, limit: int, replica: str | None = None
    ) -> tuple[builtins.list[FailoverRecord], int]:
        """The newest ``limit`` records within the retention (of ``replica``, if given), newest
        first, and how many there are."""
        return await self.repo.page(limit, self._cutoff(), replica)


def _where(since: datetime, replica: str | None) -> list[ColumnElement[bool]]:
    where = [FailoverRow.started_at >= since]
    if replica is not None:
        where.append(FailoverRow.replica == _text(replica))
    return where


def _text(value: str, limit: int = _TEXT_MAX) -> str:
    return value.replace("\x00", "")[:limit]


def _row(rec: FailoverRecord) -> dict[str, Any]:
    return {
        "id": _text(rec.id, _SHORT_MAX),
        "started_at": datetime.fromtimestamp(rec.started_at, UTC),
        "replica": _text(rec.replica),
        "request_id": _text(rec.request_id),
        "run_id": _text(rec.run_id) if rec.run_id is not None else None,
        "caller": _text(rec.caller),
        "requested": _text(rec.requested),
        "operation": _text(rec.operation, _SHORT_MAX),
        "outcome": _text(rec.outcome, _SHORT_MAX),
        "served_by": _text(rec.served_by) if rec.served_by is not None else None,
        "attempts": [_storable(asdict(a)) for a in rec.attempts],
        "prompt": _storable(rec.prompt),
    }


def _storable(value: Any) -> Any:
    """``value`` (JSON data) without NUL characters in its strings."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def _record(row: FailoverRow) -> FailoverRecord:
    return FailoverRecord(
        request_id=row.request_id,
        run_id=row.run_id,
        caller=row.caller,
        requested=row.requested,
        operation=row.operation,
        started_at=row.started_at.timestamp(),
        # Fields a later laneway added or removed are left out, not fatal to reading old rows.
        attempts=[Attempt(**{k: v for k, v in a.items() if k in _ATTEMPT_FIELDS}) for a in row.attempts],
        outcome=row.outcome,
        served_by=row.served_by,
        prompt=row.prompt,
        replica=row.replica,
        id=row.id,
    )
