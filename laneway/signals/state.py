"""One backend's runtime signal: quota from rate-limit headers, latency, and a status.

Status (DESIGN.md):
- ``exhausted`` from a ``retry-after``, or a counter at zero, until the reset time (a counter at
  zero without a reset time: ``exhausted_for`` seconds);
- else ``degraded`` if the last thing that happened was a call error, ``available`` if it was a
  success (a call error turns ``unknown`` into ``degraded``);
- ``unknown`` before anything was observed, or when nothing was for longer than the TTL.

A 429 is a quota answer, not a health failure: it exhausts the backend until its reset, and
afterwards the backend is as healthy as it was. A 503 or 529 that said when to come back
(Retry-After) makes the backend ``unavailable_until`` then: not exhausted (its quota is not used
up), not degraded (it said what it is doing); a success ends it early. Either way the backend is
*held* until then (``held_until``): the router does not call it, and waits for it when it is
back soon enough. A response without rate-limit headers never
clears an earlier signal; a response with them replaces what it reports, field by field, and a
malformed field (parsed as None) keeps the value before it.

Several replicas (cluster mode) each observe the same backend; what one observed is merged into
the others' signals (``merge``) by the observations' own wall-clock times, kept per group of
facts: the quota (``quota_at``: its counters, resets and exhaustion), the announced
unavailability (``unavailable_at``), and the outcomes (the last success's and error's times). A
group is taken from the other side only when it observed it strictly later, so an event that
arrives late or twice never undoes a newer observation. Latency windows are never merged: each
replica measures its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from laneway.latency import LatencyWindow
from laneway.signals.headers import Quota, RateLimits

# What routing does with a backend (``BackendSignal.routing``).
Routing = tuple[float, float, str | None]


class Status(StrEnum):
    AVAILABLE = "available"
    DEGRADED = "degraded"
    EXHAUSTED = "exhausted"
    UNKNOWN = "unknown"


def _merge(old: Quota | None, new: Quota | None) -> Quota | None:
    if new is None:
        return old
    if old is None:
        return new
    return Quota(
        limit=new.limit if new.limit is not None else old.limit,
        remaining=new.remaining if new.remaining is not None else old.remaining,
        reset_at=new.reset_at if new.reset_at is not None else old.reset_at,
    )


def _quota_dict(q: Quota | None, now: float) -> dict[str, Any] | None:
    if q is None:
        return None
    reset_in = None if q.reset_at is None else max(0.0, q.reset_at - now)
    return {"limit": q.limit, "remaining": q.remaining, "reset_at": q.reset_at, "reset_in": reset_in}


def _quota(data: Any) -> Quota | None:
    if not isinstance(data, dict):
        return None
    return Quota(limit=data.get("limit"), remaining=data.get("remaining"), reset_at=data.get("reset_at"))


def _later(theirs: float | None, mine: float | None) -> bool:
    """Did the other side observe it strictly later (never observed: never later)?"""
    return theirs is not None and (mine is None or theirs > mine)


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _last_outcome_at(sig: BackendSignal) -> float | None:
    return _latest(sig.last_success_at, sig.last_error_at)


@dataclass
class LaneLatency:
    latency: LatencyWindow
    ttft: LatencyWindow


@dataclass
class BackendSignal:
    backend: str
    family: str
    window: int = 128
    requests: Quota | None = None
    tokens: Quota | None = None
    retry_at: float | None = None
    unified_status: str | None = None
    unified_reset_at: float | None = None
    exhausted_until: float | None = None
    unavailable_until: float | None = None
    last_success_at: float | None = None
    last_error_at: float | None = None
    last_error: str | None = None
    last_rate_limited_at: float | None = None
    # When the quota facts (counters, resets, retry_at, exhausted_until) and the announced
    # unavailability were last observed: what ``merge`` decides by.
    quota_at: float | None = None
    unavailable_at: float | None = None
    # What happened last, success or error: kept apart from the timestamps, which two events can
    # share (a coarse or injected clock) and a wall-clock step can reorder.
    last_outcome: str | None = None
    recorded_at: float | None = None  # the last observation of any kind
    latency: LatencyWindow = field(init=False)
    ttft: LatencyWindow = field(init=False)
    lanes: dict[str, LaneLatency] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.latency = LatencyWindow(self.window)
        self.ttft = LatencyWindow(self.window)

    # -- observing ---------------------------------------------------------------------------

    def lane(self, lane_id: str) -> LaneLatency:
        found = self.lanes.get(lane_id)
        if found is None:
            found = self.lanes[lane_id] = LaneLatency(LatencyWindow(self.window), LatencyWindow(self.window))
        return found

    def apply_limits(self, limits: RateLimits, now: float, exhausted_for: float) -> None:
        """Take what a response's rate-limit headers said. Nothing reported: nothing changes."""
        if limits.empty:
            return
        self.quota_at = now
        self.requests = _merge(self.requests, limits.requests)
        self.tokens = _merge(self.tokens, limits.tokens)
        if limits.retry_at is not None:
            self.retry_at = limits.retry_at
        if limits.unified_status is not None:
            self.unified_status = limits.unified_status
        if limits.unified_reset_at is not None:
            self.unified_reset_at = limits.unified_reset_at
        # Exhaustion is decided by this response alone: counters it did not report, or that it
        # reported with a malformed value, do not keep an old exhaustion alive or start a new one.
        until: list[float] = []
        if limits.retry_at is not None:
            until.append(max(limits.retry_at, now))
        for quota in (limits.requests, limits.tokens):
            if quota is not None and quota.remaining == 0:
                until.append(
                    quota.reset_at if quota.reset_at and quota.reset_at > now else now + exhausted_for
                )
        if limits.unified_status == "rejected":
            reset = limits.unified_reset_at
            until.append(reset if reset and reset > now else now + exhausted_for)
        self.exhausted_until = max(until) if until else None

    def succeeded(self, now: float) -> None:
        self.last_success_at = self.recorded_at = now
        self.last_outcome = "success"
        self.unavailable_until = None  # it answered: available again, whatever it said before
        self.unavailable_at = now

    def failed(self, now: float, message: str) -> None:
        self.last_error_at = self.recorded_at = now
        self.last_error = message
        self.last_outcome = "error"

    def rate_limited(self, now: float, message: str, exhausted_for: float) -> None:
        """A 429: exhausted until the reset its headers gave (applied before this), else for a while."""
        self.last_rate_limited_at = self.recorded_at = self.quota_at = now
        self.last_error = message
        if self.exhausted_until is None or self.exhausted_until <= now:
            self.exhausted_until = now + exhausted_for

    def unavailable(self, now: float, message: str, until: float) -> None:
        """A 503 or 529 that said to come back at ``until``: held till then, not degraded."""
        self.recorded_at = self.unavailable_at = now
        self.last_error = message
        self.unavailable_until = until

    # -- merging what another replica observed ------------------------------------------------

    def merge(self, other: BackendSignal) -> None:
        """Take the facts ``other`` (another replica's view of this backend) observed later than
        this one did, group by group (the module's docstring); equal times keep this side's, so a
        duplicate changes nothing. The latency windows stay this replica's own."""
        if _later(other.quota_at, self.quota_at):
            self.requests, self.tokens, self.retry_at = other.requests, other.tokens, other.retry_at
            self.unified_status, self.unified_reset_at = other.unified_status, other.unified_reset_at
            self.exhausted_until, self.quota_at = other.exhausted_until, other.quota_at
        if _later(other.unavailable_at, self.unavailable_at):
            self.unavailable_until, self.unavailable_at = other.unavailable_until, other.unavailable_at
        if other.last_outcome is not None and _later(_last_outcome_at(other), _last_outcome_at(self)):
            self.last_outcome = other.last_outcome
        if _later(other.recorded_at, self.recorded_at):
            self.recorded_at = other.recorded_at
            self.last_error = other.last_error or self.last_error
        self.last_success_at = _latest(self.last_success_at, other.last_success_at)
        self.last_error_at = _latest(self.last_error_at, other.last_error_at)
        self.last_rate_limited_at = _latest(self.last_rate_limited_at, other.last_rate_limited_at)

    def routing(self, now: float) -> Routing:
        """What routing does with the backend, as of ``now``: until when its quota is used up and
        until when it is unavailable (0: it is not), and whether its last call failed. When this
        changes, the other replicas are told (cluster mode); a counter moving is not a change."""
        exhausted = self.exhausted_until or 0.0
        unavailable = self.unavailable_until or 0.0
        return (
            exhausted if exhausted > now else 0.0,
            unavailable if unavailable > now else 0.0,
            self.last_outcome,
        )

    # -- reading -----------------------------------------------------------------------------

    def held_until(self) -> float:
        """Until when (wall clock) the backend asked not to be called: its quota's reset or the end
        of its announced unavailability, whichever is later (0: no such request)."""
        return max(self.exhausted_until or 0.0, self.unavailable_until or 0.0)

    def status(self, now: float, ttl: float) -> Status:
        if self.exhausted_until is not None and now < self.exhausted_until:
            return Status.EXHAUSTED
        last = max(t for t in (self.last_success_at, self.last_error_at, -1.0) if t is not None)
        if self.last_outcome is None or last < 0 or now - last > ttl:
            return Status.UNKNOWN
        return Status.DEGRADED if self.last_outcome == "error" else Status.AVAILABLE

    def _facts(self) -> dict[str, Any]:
        """The observed fields, as shown and as persisted alike."""
        return {
            "backend": self.backend,
            "family": self.family,
            "retry_at": self.retry_at,
            "unified_status": self.unified_status,
            "unified_reset_at": self.unified_reset_at,
            "exhausted_until": self.exhausted_until,
            "unavailable_until": self.unavailable_until,
            "last_success_at": self.last_success_at,
            "last_error_at": self.last_error_at,
            "last_error": self.last_error,
            "last_rate_limited_at": self.last_rate_limited_at,
            "quota_at": self.quota_at,
            "unavailable_at": self.unavailable_at,
            "last_outcome": self.last_outcome,
            "recorded_at": self.recorded_at,
        }

    def as_dict(self, now: float, ttl: float) -> dict[str, Any]:
        """The signal as the admin API and the CLI show it: facts plus what derives from them."""
        return {
            **self._facts(),
            "status": self.status(now, ttl),
            "requests": _quota_dict(self.requests, now),
            "tokens": _quota_dict(self.tokens, now),
            "latency": self.latency.summary().as_dict(),
            "ttft": self.ttft.summary().as_dict(),
            "lanes": {
                lane_id: {"latency": w.latency.summary().as_dict(), "ttft": w.ttft.summary().as_dict()}
                for lane_id, w in sorted(self.lanes.items())
            },
        }

    # -- persistence -------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """What survives a restart: the facts, with the latency samples rather than summaries."""
        return {
            **self._facts(),
            "requests": _quota_dict(self.requests, 0.0),
            "tokens": _quota_dict(self.tokens, 0.0),
            "latency": self.latency.samples(),
            "ttft": self.ttft.samples(),
            "lanes": {
                k: {"latency": v.latency.samples(), "ttft": v.ttft.samples()} for k, v in self.lanes.items()
            },
        }

    def shared_record(self) -> dict[str, Any]:
        """What another replica merges (``merge``): the facts, without this one's latency windows.
        ``from_record`` reads it."""
        return {
            **self._facts(),
            "requests": _quota_dict(self.requests, 0.0),
            "tokens": _quota_dict(self.tokens, 0.0),
        }

    @classmethod
    def from_record(cls, data: dict[str, Any], window: int) -> BackendSignal:
        """Raises KeyError/TypeError/ValueError on a record it cannot read (the caller skips it)."""
        sig = cls(str(data["backend"]), str(data["family"]), window=window)
        sig.requests, sig.tokens = _quota(data.get("requests")), _quota(data.get("tokens"))
        for name in (
            "retry_at",
            "unified_reset_at",
            "exhausted_until",
            "unavailable_until",
            "last_success_at",
            "last_error_at",
            "last_rate_limited_at",
            "quota_at",
            "unavailable_at",
            "recorded_at",
        ):
            value = data.get(name)
            setattr(sig, name, None if value is None else float(value))
        sig.unified_status = data.get("unified_status")
        outcome = data.get("last_outcome")
        sig.last_outcome = outcome if outcome in ("success", "error") else None
        sig.last_error = data.get("last_error")
        sig.latency = LatencyWindow(window, map(float, data.get("latency") or ()))
        sig.ttft = LatencyWindow(window, map(float, data.get("ttft") or ()))
        for lane_id, windows in (data.get("lanes") or {}).items():
            sig.lanes[str(lane_id)] = LaneLatency(
                LatencyWindow(window, map(float, windows.get("latency") or ())),
                LatencyWindow(window, map(float, windows.get("ttft") or ())),
            )
        return sig
