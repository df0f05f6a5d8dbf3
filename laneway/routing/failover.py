"""Attribution and failover records.

Every request carries a ``RequestInfo`` (caller, request id, run id, priority). Every error that
leaves the router carries an ``Attribution`` (``laneway.errors``: that, plus the lane and the
attempt number, and the prompt only when the operator enabled ``routing.record_prompts``): the
client sees it in the error body, the log in a structured event.

A request that needed more than one attempt, or failed, leaves a ``FailoverRecord`` (each
attempt's lane, outcome, error and timings) in a bounded in-memory log, newest first at
``GET /admin/failovers``, and as one ``failover`` log event.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

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


@dataclass(slots=True)
class Attempt:
    attempt: int
    lane: str
    backend: str
    outcome: str  # served | failed | rate_limited (a 429: quota, not ill health) | skipped
    error: str | None = None
    code: str | None = None
    status: int | None = None
    queued: float = 0.0  # seconds waiting for a pool slot
    elapsed: float = 0.0  # seconds of the call itself


@dataclass(slots=True)
class FailoverRecord:
    request_id: str
    run_id: str | None
    caller: str
    requested: str
    operation: str
    started_at: float  # wall clock
    attempts: list[Attempt] = field(default_factory=list)
    outcome: str = "failed"  # served | failed
    served_by: str | None = None
    prompt: Any = None

    def as_dict(self) -> dict[str, Any]:
        shown = asdict(self)
        if self.prompt is None:
            del shown["prompt"]
        return shown


class FailoverLog:
    """The last ``size`` failover records, in memory (newest first when read)."""

    def __init__(self, size: int = 1000) -> None:
        self._records: deque[FailoverRecord] = deque(maxlen=size)
        self.total = 0  # every record ever added, kept or not (a counter for rates)

    def add(self, record: FailoverRecord) -> None:
        self._records.append(record)
        self.total += 1
        log.warning(
            "failover",
            extra={
                "request_id": record.request_id,
                "run_id": record.run_id,
                "caller": record.caller,
                "requested": record.requested,
                "outcome": record.outcome,
                "served_by": record.served_by,
                "attempts": [asdict(a) for a in record.attempts],
            },
        )

    def recent(self, limit: int = 100) -> list[FailoverRecord]:
        out = list(self._records)[-limit:] if limit else []
        out.reverse()
        return out

    def __len__(self) -> int:
        return len(self._records)
