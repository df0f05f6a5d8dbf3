"""Attribution and failover records.

Every request carries a ``RequestInfo`` (caller, request id, run id, priority). Every error that
leaves the router carries an ``Attribution`` (``laneway.errors``: that, plus the lane and the
attempt number, and the prompt only when the operator enabled ``routing.record_prompts``): the
client sees it in the error body, the log in a structured event.

A request that needed more than one attempt, or failed, leaves a ``FailoverRecord``
(``laneway.failovers``: each attempt's lane, outcome, error and timings, and the replica that
handled it) in the SQL database, written in batches off the request path by the ``sink`` (so
``GET /admin/failovers`` shows every replica's, and they outlive a restart); in a bounded
in-memory log, what this replica answers when the database cannot be read; and as one
``failover`` log event.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import asdict, dataclass
from typing import Protocol

from laneway.failovers import FailoverRecord
from laneway.providers.base import Native
from laneway.routing.record import RequestRecord

log = logging.getLogger("laneway.routing")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    caller: str = "anonymous"
    request_id: str = ""
    run_id: str | None = None
    priority: int = 0
    published_lanes: bool = True  # the key may be served by published (virtual) lanes
    record: RequestRecord | None = None  # filled in as the request is served (the access log's)
    native: Native | None = None  # the request in the client's own dialect (providers.base.Native)


class FailoverSink(Protocol):
    """Takes each record to keep it for good (``storage.batch_writer.BatchWriter``: a synchronous
    append to a bounded buffer, written to the database off the request path)."""

    def record(self, item: FailoverRecord) -> None: ...


class FailoverLog:
    """The last ``size`` failover records of this replica, in memory (newest first when read),
    each stamped with ``replica`` (the id of the replica that handled the request) and handed to
    ``sink`` on its way in. Adding never blocks and never raises."""

    def __init__(self, size: int = 1000, *, replica: str = "", sink: FailoverSink | None = None) -> None:
        self._records: deque[FailoverRecord] = deque(maxlen=size)
        self.replica = replica
        self.sink = sink
        self.total = 0  # every record ever added, kept or not (a counter for rates)

    def add(self, record: FailoverRecord) -> None:
        record.replica = self.replica
        self._records.append(record)
        self.total += 1
        if self.sink is not None:
            self.sink.record(record)
        log.warning(
            "failover",
            extra={
                "request_id": record.request_id,
                "run_id": record.run_id,
                "caller": record.caller,
                "requested": record.requested,
                "outcome": record.outcome,
                "served_by": record.served_by,
                "replica": record.replica,
                "attempts": [asdict(a) for a in record.attempts],
            },
        )

    def recent(self, limit: int = 100) -> list[FailoverRecord]:
        out = list(self._records)[-limit:] if limit else []
        out.reverse()
        return out

    def __len__(self) -> int:
        return len(self._records)
