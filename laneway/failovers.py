"""Failover records: what happened to a request that needed more than one attempt, or failed.

The record itself, on the ground floor like ``laneway.usage``: routing makes records
(``routing.failover.FailoverLog``), storage writes them to the database in batches
(``storage.failovers_repo``), the API and the CLI read them, and it imports none of them.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Any


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


def new_record_id() -> str:
    """A record's own id: a request id is the client's to choose and need not be unique."""
    return secrets.token_hex(8)


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
    replica: str = ""  # the replica that handled the request (``cluster.replica_id``)
    id: str = field(default_factory=new_record_id)

    def as_dict(self) -> dict[str, Any]:
        shown = asdict(self)
        if self.prompt is None:
            del shown["prompt"]
        return shown
