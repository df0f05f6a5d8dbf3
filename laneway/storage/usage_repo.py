"""The usage records: written in batches by ``laneway.usage.UsageRecorder``, summed for
``laneway usage`` and ``GET /admin/usage``.

Every value is made storable before it is sent (strings clipped to their columns, counts outside
a column's range stored as unknown): a batch holds many callers' records, and one garbled field
must not make the database refuse all of them.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, insert, select
from sqlalchemy.exc import IntegrityError

from laneway.storage.errors import InvalidValue, StorageError
from laneway.storage.models import UsageRow
from laneway.storage.repos import _Repo, _runs_to_completion
from laneway.usage import GROUP_FIELDS, UsageRecord

# Rows per INSERT: 12 bound parameters each stays under SQLite's limit (32766) and PostgreSQL's
# (32767). A recorder batch (500 by default) is one statement.
INSERT_ROWS = 1000
_TEXT_MAX = 255  # the String(255) columns
_INT_MAX = 2**31 - 1  # the Integer columns
_GROUP_COLUMNS: dict[str, Any] = {name: getattr(UsageRow, name) for name in GROUP_FIELDS}


@dataclass(frozen=True)
class UsageTotals:
    """One group of a usage summary. Token sums are None when no request of the group reported
    that count; ``unreported`` counts the requests that reported no tokens at all (an OpenAI
    stream whose client did not ask for usage), so a reader knows how complete the sums are."""

    group: Mapping[str, str]  # the grouped fields and their values: {"caller": "ci", ...}
    requests: int
    prompt_tokens: int | None
    completion_tokens: int | None
    unreported: int

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.group,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "unreported": self.unreported,
        }


class UsageRepo(_Repo):
    """The ``usage_records`` table."""

    @_runs_to_completion
    async def add_many(self, records: Sequence[UsageRecord]) -> int:
        """Insert ``records`` in one multi-row INSERT per ``INSERT_ROWS``, in one transaction.
        Returns how many were written."""
        if not records:
            return 0
        rows = [_row(r) for r in records]
        try:
            async with self._session(write=True) as s:
                # The executemany form: one cached statement, batched by SQLAlchemy's
                # "insertmanyvalues". ``insert().values(rows)`` compiled a new statement with a
                # parameter per cell for every batch: ten times the CPU, on the gateway's loop.
                for i in range(0, len(rows), INSERT_ROWS):
                    await s.execute(insert(UsageRow), rows[i : i + INSERT_ROWS])
        except IntegrityError as exc:
            raise StorageError(f"the database refused usage records: {exc.orig}") from None
        return len(rows)

    @_runs_to_completion
    async def summary(
        self,
        since: datetime | None = None,
        group_by: Sequence[str] = ("caller",),
        *,
        replica: str | None = None,
    ) -> builtins.list[UsageTotals]:
        """Requests and token sums per group (``group_by``: any of ``GROUP_FIELDS``; none gives one
        total), since ``since`` if given, of the requests ``replica`` served if given. Busiest
        groups first. No requests, no rows."""
        unknown = [g for g in group_by if g not in _GROUP_COLUMNS]
        if unknown:
            raise InvalidValue(f"cannot group usage by '{unknown[0]}'; use any of: {', '.join(GROUP_FIELDS)}")
        groups = [_GROUP_COLUMNS[g] for g in dict.fromkeys(group_by)]
        requests = func.count().label("requests")
        silent = and_(UsageRow.prompt_tokens.is_(None), UsageRow.completion_tokens.is_(None))
        query = select(
            *groups,
            requests,
            func.sum(UsageRow.prompt_tokens),
            func.sum(UsageRow.completion_tokens),
            func.count(case((silent, 1))),
        )
        if since is not None:
            query = query.where(_since(since))
        if replica is not None:
            query = query.where(UsageRow.replica == replica[:_TEXT_MAX])
        if groups:
            query = query.group_by(*groups).order_by(requests.desc(), *groups)
        async with self._session() as s:
            result = (await s.execute(query)).all()
        n = len(groups)
        return [
            UsageTotals(
                group={col.key: value for col, value in zip(groups, row[:n], strict=True)},
                requests=int(row[n]),
                prompt_tokens=_int_or_none(row[n + 1]),
                completion_tokens=_int_or_none(row[n + 2]),
                unreported=int(row[n + 3]),
            )
            for row in result
            if row[n]  # without GROUP BY an empty table still answers one row of zeroes
        ]

    @_runs_to_completion
    async def recent(self, limit: int = 100) -> builtins.list[UsageRecord]:
        """The newest ``limit`` records, newest first."""
        query = select(UsageRow).order_by(UsageRow.at.desc(), UsageRow.id.desc()).limit(max(limit, 0))
        async with self._session() as s:
            return [_record(r) for r in (await s.scalars(query)).all()]


def _since(since: datetime) -> ColumnElement[bool]:
    if since.tzinfo is None:
        raise InvalidValue("'since' must be an aware datetime (UTC)")
    return UsageRow.at >= since


def _row(rec: UsageRecord) -> dict[str, Any]:
    return {
        "at": datetime.fromtimestamp(rec.at, UTC),
        "caller": rec.caller[:_TEXT_MAX],
        "requested": rec.requested[:_TEXT_MAX],
        "lane": rec.lane[:_TEXT_MAX],
        "backend": rec.backend[:_TEXT_MAX],
        "model": rec.model[:_TEXT_MAX],
        "prompt_tokens": _count(rec.prompt_tokens),
        "completion_tokens": _count(rec.completion_tokens),
        "request_id": rec.request_id[:_TEXT_MAX],
        "attempts": min(max(rec.attempts, 0), _INT_MAX),
        "streamed": rec.streamed,
        "replica": rec.replica[:_TEXT_MAX],
    }


def _count(value: int | None) -> int | None:
    return value if value is not None and 0 <= value <= _INT_MAX else None


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)  # PostgreSQL's SUM of integers is a bigint


def _record(row: UsageRow) -> UsageRecord:
    return UsageRecord(
        at=row.at.timestamp(),
        caller=row.caller,
        requested=row.requested,
        lane=row.lane,
        backend=row.backend,
        model=row.model,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        request_id=row.request_id,
        attempts=row.attempts,
        streamed=row.streamed,
        replica=row.replica,
    )
