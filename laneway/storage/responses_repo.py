"""Stored responses of the Responses API: the ``responses`` table (``ResponsesRepo``) and the
retention rule over it (``ResponseStore``).

A response is stored before its answer leaves the gateway (a stream: before its last event), so
a client that chains on it at once finds it, on whichever replica it lands: the table is in the
declared-state database (SQLite, or PostgreSQL shared by every replica), not in a replica's memory.

Each row belongs to one caller: reading, chaining on or deleting another caller's response
finds nothing, exactly as an id that never existed (a 404 either way: a caller cannot learn
another's ids). Rows live ``responses.retention`` seconds; one past its ``expires_at`` is never
served, and the expired rows are deleted by the writes (at most once per ``sweep_every``), so
the table stays as large as the traffic of one retention period.

When the database cannot be reached, what needs a stored response (storing one, chaining on one,
reading or deleting one) fails with ``StoredResponsesUnavailable``: a 503 whose client text says
so in laneway's words (the database's address and the driver's reason are the operator's, logged
once per outage), while every request that needs no stored response is served as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, insert, select

from laneway.clock import Clock
from laneway.storage.errors import DatabaseUnavailable
from laneway.storage.models import ResponseRow
from laneway.storage.repos import _Repo, _rowcount, _runs_to_completion

_TEXT_MAX = 255
T = TypeVar("T")
log = logging.getLogger(__name__)


class StoredResponsesUnavailable(DatabaseUnavailable):
    """The database that keeps stored responses cannot be reached (503). ``message`` names it and
    says why (for the operator); a client is told only what it can act on."""

    @property
    def client_message(self) -> str:
        return (
            "Stored responses are unavailable right now: the gateway cannot reach its database. "
            "Retry later; a request with store: false and no previous_response_id does not need them."
        )


@dataclass(frozen=True)
class StoredResponse:
    """One stored response: ``input`` the chat messages it answered (its whole conversation,
    without the instructions of its turn), ``output`` its answer as chat messages, ``response``
    the Responses object as the client got it."""

    id: str
    caller: str
    model: str
    created_at: datetime
    expires_at: datetime
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]
    response: dict[str, Any]

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """What a turn chained on it continues: its input, then its answer."""
        return [*self.input, *self.output]

    @classmethod
    def _from_row(cls, row: ResponseRow) -> StoredResponse:
        return cls(
            id=row.id,
            caller=row.caller,
            model=row.model,
            created_at=row.created_at,
            expires_at=row.expires_at,
            input=list(row.input),
            output=list(row.output),
            response=dict(row.response),
        )


class ResponsesRepo(_Repo):
    """The ``responses`` table. Times are given by the caller (``ResponseStore`` reads its clock)."""

    @_runs_to_completion
    async def put(self, stored: StoredResponse) -> None:
        row = {
            "id": stored.id,
            "caller": stored.caller[:_TEXT_MAX],
            "model": stored.model[:_TEXT_MAX],
            "created_at": stored.created_at,
            "expires_at": stored.expires_at,
            "input": stored.input,
            "output": stored.output,
            "response": stored.response,
        }
        async with self._session(write=True) as s:
            await s.execute(insert(ResponseRow), [row])

    @_runs_to_completion
    async def get(self, response_id: str, caller: str, now: datetime) -> StoredResponse | None:
        """The response ``response_id`` of ``caller``, unless it expired by ``now``."""
        query = select(ResponseRow).where(
            ResponseRow.id == response_id,
            ResponseRow.caller == caller[:_TEXT_MAX],
            ResponseRow.expires_at > now,
        )
        async with self._session() as s:
            row = (await s.scalars(query)).first()
            return StoredResponse._from_row(row) if row is not None else None

    @_runs_to_completion
    async def delete(self, response_id: str, caller: str) -> bool:
        """Delete ``caller``'s response ``response_id``; False if it has none by that id."""
        query = delete(ResponseRow).where(
            ResponseRow.id == response_id, ResponseRow.caller == caller[:_TEXT_MAX]
        )
        async with self._session(write=True) as s:
            return _rowcount(await s.execute(query)) > 0

    @_runs_to_completion
    async def sweep(self, now: datetime) -> int:
        """Delete every response expired by ``now``; how many went."""
        async with self._session(write=True) as s:
            return _rowcount(await s.execute(delete(ResponseRow).where(ResponseRow.expires_at <= now)))


class ResponseStore:
    """The stored responses as the API uses them: the retention (seconds) applied by the
    gateway's clock; expired rows swept by the writes, at most once per ``sweep_every``."""

    def __init__(
        self, repo: ResponsesRepo, clock: Clock, *, retention: float, sweep_every: float = 60.0
    ) -> None:
        self.repo = repo
        self.clock = clock
        self.retention = retention
        self.sweep_every = sweep_every
        self._swept_at: float | None = None
        self._away = False  # the last use could not reach the database (said once, and its end)

    async def _use(self, operation: Awaitable[T]) -> T:
        """Run one repository operation; the database being away becomes
        ``StoredResponsesUnavailable``, logged when it begins and when it is over."""
        try:
            result = await operation
        except DatabaseUnavailable as exc:
            if not self._away:
                log.warning("stored responses are unavailable until the database is back: %s", exc.message)
            self._away = True
            raise StoredResponsesUnavailable(exc.message) from None
        if self._away:
            log.warning("stored responses are available again")
        self._away = False
        return result

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), UTC)

    async def save(
        self,
        response: Mapping[str, Any],
        caller: str,
        input: Sequence[dict[str, Any]],
        output: Sequence[dict[str, Any]],
    ) -> StoredResponse:
        now = self.clock.now()
        if self._swept_at is None or now - self._swept_at >= self.sweep_every:
            self._swept_at = now
            await self._use(self.repo.sweep(self._now()))
        created = datetime.fromtimestamp(now, UTC)
        stored = StoredResponse(
            id=str(response["id"]),
            caller=caller,
            model=str(response.get("model") or ""),
            created_at=created,
            expires_at=created + timedelta(seconds=self.retention),
            input=list(input),
            output=list(output),
            response=dict(response),
        )
        await self._use(self.repo.put(stored))
        return stored

    async def load(self, response_id: str, caller: str) -> StoredResponse | None:
        return await self._use(self.repo.get(response_id, caller, self._now()))

    async def delete(self, response_id: str, caller: str) -> bool:
        return await self._use(self.repo.delete(response_id, caller))
