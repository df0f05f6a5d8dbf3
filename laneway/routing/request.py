"""One request on its way through the router: its budget, what its attempts did, its record.

A ``Dispatch`` is created when the router takes a request and is dropped when it leaves. It holds
the attempt budget and the deadline, the waits spent on lanes that asked to be left alone for a
moment, the lanes that already failed it, the last error, and the failover record, which exists
only once something went wrong: most requests are served by their first lane and should not pay
for a record they would throw away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from laneway.clock import Clock
from laneway.config.schema import RoutingConfig
from laneway.errors import Attribution, LanewayError
from laneway.failovers import Attempt, FailoverRecord
from laneway.inventory.lanes import Lane
from laneway.operations import Operation
from laneway.routing.failover import FailoverLog, RequestInfo


def prompt_of(body: dict[str, Any]) -> Any:
    return body.get("messages") or body.get("prompt") or body.get("input")


@dataclass(slots=True)
class Dispatch:
    op: Operation
    body: dict[str, Any]
    raw: bytes
    info: RequestInfo
    deadline: float  # monotonic: the request's whole life, queueing, waits and failover included
    budget: int  # attempts at most
    record_prompts: bool
    started_at: float  # wall clock
    attempts: int = 0  # made so far (a lane passed over by its breaker is not one)
    waited: float = 0.0  # seconds spent waiting for lanes that asked to be left alone a moment
    last: LanewayError | None = None  # the error of the last failed attempt
    last_lane: str | None = None  # the lane of the last attempt
    failed: set[str] = field(default_factory=set)  # lanes that failed this request for good
    record: FailoverRecord | None = None

    @classmethod
    def start(
        cls,
        op: Operation,
        body: dict[str, Any],
        raw: bytes,
        info: RequestInfo,
        clock: Clock,
        settings: RoutingConfig,
    ) -> Dispatch:
        return cls(
            op,
            body,
            raw,
            info,
            deadline=clock.monotonic() + settings.deadline,
            budget=settings.attempts,
            record_prompts=settings.record_prompts,
            started_at=clock.now(),
        )

    @property
    def requested(self) -> str:
        return str(self.body.get("model"))

    def spent(self, now: float) -> bool:
        """No attempt may start: the budget or the deadline (``now``: monotonic) is used up."""
        return self.attempts >= self.budget or now >= self.deadline

    def begin(self, lane: Lane) -> int:
        """A new attempt at ``lane``: its number."""
        self.attempts += 1
        self.last_lane = lane.id
        return self.attempts

    def note(self, entry: Attempt) -> FailoverRecord:
        if self.record is None:
            info = self.info
            self.record = FailoverRecord(
                request_id=info.request_id,
                run_id=info.run_id,
                caller=info.caller,
                requested=self.requested,
                operation=self.op.value,
                started_at=self.started_at,
                prompt=prompt_of(self.body) if self.record_prompts else None,
            )
        self.record.attempts.append(entry)
        return self.record

    def attribution(self, lane: str | None, attempt: int) -> Attribution:
        info = self.info
        prompt = prompt_of(self.body) if self.record_prompts else None
        return Attribution(info.caller, info.request_id, info.run_id, lane, attempt, prompt)

    def stamp(self, exc: LanewayError) -> LanewayError:
        """``exc`` leaves the router: it names the last lane tried and the attempts made (none,
        when it came from resolving the name), unless it already says where it failed."""
        if exc.attribution is None:
            exc.attribution = self.attribution(self.last_lane, self.attempts)
        return exc

    def served(self, lane: Lane, entry: Attempt, failovers: FailoverLog) -> None:
        """Served, but not at the first try (or after a lane was passed over): keep the record."""
        if self.record is not None:
            record = self.note(entry)
            record.outcome, record.served_by = "served", lane.id
            failovers.add(record)

    def given_up(self, failovers: FailoverLog) -> None:
        if self.record is not None:
            failovers.add(self.record)
