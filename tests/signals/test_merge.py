"""Merging what another replica observed of a backend (cluster mode), and telling only what
changes routing. The merge decides by the observations' own times, group by group (quota,
announced unavailability, outcomes): a late event never undoes a newer observation, a duplicate
changes nothing, and each replica keeps its own latency windows. All on an injected clock."""

from __future__ import annotations

import pytest

from laneway.clock import ManualClock
from laneway.config.schema import SignalsConfig
from laneway.errors import UpstreamStatusError, UpstreamTimeout, classify
from laneway.signals.state import BackendSignal, Status
from laneway.signals.store import Signals, read_persisted
from laneway.storage import MemoryStore

SETTINGS = SignalsConfig()


def replica(clock: ManualClock) -> tuple[Signals, list[str]]:
    """A replica's signals, and the backends it would tell the others about, in order."""
    signals = Signals(MemoryStore(clock), clock, SETTINGS)
    told: list[str] = []
    signals.on_change = told.append
    return signals, told


def limited(signals: Signals, clock: ManualClock, retry_after: str = "60") -> None:
    exc = UpstreamStatusError(
        "429", backend="b", upstream_status=429, upstream_headers={"retry-after": retry_after}
    )
    signals.failure("b", "openai", "lane", exc, classify(exc, now=clock.now()))


def unavailable(signals: Signals, clock: ManualClock, retry_after: str = "30") -> None:
    exc = UpstreamStatusError(
        "503", backend="b", upstream_status=503, upstream_headers={"retry-after": retry_after}
    )
    signals.failure("b", "openai", "lane", exc, classify(exc, now=clock.now()))


def broken(signals: Signals, clock: ManualClock) -> None:
    exc = UpstreamTimeout("timed out", backend="b")
    signals.failure("b", "openai", "lane", exc, classify(exc, now=clock.now()))


RESET = {"x-ratelimit-remaining-requests": "99", "x-ratelimit-limit-requests": "100"}


def copy(signals: Signals) -> BackendSignal:
    """What travels in an event: the shared record, read back."""
    sig = signals.get("b")
    assert sig is not None
    return BackendSignal.from_record(sig.shared_record(), SETTINGS.window)


def test_an_exhaustion_observed_elsewhere_holds_the_backend_here_and_a_late_one_changes_nothing() -> None:
    clock = ManualClock()
    here, _ = replica(clock)
    there, _ = replica(clock)
    here.success("b", "openai", "lane", {}, 0.2)
    clock.advance(1)
    limited(there, clock)  # exhausted until now + 60
    event = copy(there)
    here.merge(event)
    assert here.status("b") == Status.EXHAUSTED
    assert here.held_until("b") == there.held_until("b") == clock.now() + 60
    here.merge(event)  # the same event twice: nothing moves
    assert here.held_until("b") == clock.now() + 60

    clock.advance(5)
    here.success("b", "openai", "lane", RESET, 0.2)  # the quota was reset early: its headers say so
    assert here.held_until("b") == 0
    here.merge(event)  # the 429's event arrives again, late: older than the reset, it undoes nothing
    assert here.held_until("b") == 0
    assert here.status("b") == Status.AVAILABLE
    there.merge(copy(here))  # and the reset reaches the replica that saw the 429
    assert there.held_until("b") == 0


def test_an_announced_unavailability_and_its_end_follow_the_later_observation() -> None:
    clock = ManualClock()
    here, _ = replica(clock)
    there, _ = replica(clock)
    unavailable(there, clock)
    late = copy(there)
    clock.advance(1)
    here.success("b", "openai", "lane", {}, 0.1)  # it answered here after that: available again
    here.merge(late)
    assert here.held_until("b") == 0
    there.merge(copy(here))
    assert there.held_until("b") == 0
    clock.advance(1)
    unavailable(there, clock)  # a newer 503 with Retry-After: held again, everywhere
    here.merge(copy(there))
    assert here.held_until("b") == clock.now() + 30
    assert here.status("b") == Status.AVAILABLE  # held, not degraded: it said what it is doing


def test_outcomes_merge_by_time_and_latency_windows_stay_each_replicas_own() -> None:
    clock = ManualClock()
    here, _ = replica(clock)
    there, _ = replica(clock)
    here.success("b", "openai", "lane", {}, 0.5)
    older_success = copy(here)
    clock.advance(1)
    broken(there, clock)
    here.merge(copy(there))
    assert here.status("b") == Status.DEGRADED
    here.merge(older_success)  # late: the error is newer
    assert here.status("b") == Status.DEGRADED
    sig = here.get("b")
    assert sig is not None
    assert sig.latency.samples() == [0.5]  # its own measurement, not replaced
    assert sig.lanes["lane"].latency.samples() == [0.5]
    assert sig.last_error == "timed out"
    clock.advance(1)
    there.success("b", "openai", "lane", {}, 9.0)
    here.merge(copy(there))
    assert here.status("b") == Status.AVAILABLE
    assert sig.latency.samples() == [0.5]


def test_only_changes_that_matter_to_routing_are_told() -> None:
    clock = ManualClock()
    signals, told = replica(clock)
    for _ in range(5):  # the first success is news (available); the others are not
        signals.success("b", "openai", "lane", RESET, 0.1)
        clock.advance(0.1)
    assert told == ["b"]
    broken(signals, clock)  # degraded
    broken(signals, clock)
    assert told == ["b", "b"]
    limited(signals, clock)  # exhausted
    assert told == ["b", "b", "b"]
    clock.advance(61)  # the exhaustion ran out on its own: no news (every replica's clock says so)
    signals.success("b", "openai", "lane", {}, 0.1)  # ... but the call succeeding after errors is
    assert told == ["b", "b", "b", "b"]
    merged, merged_told = replica(clock)
    merged.merge(copy(signals))  # what was told by another replica is not told on
    assert merged_told == []


@pytest.mark.anyio
async def test_in_cluster_mode_load_and_flush_merge_with_what_the_store_holds() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)  # one store, as every replica shares Redis
    here, there = Signals(store, clock, SETTINGS), Signals(store, clock, SETTINGS)
    here.merge_persisted = there.merge_persisted = True
    here.success("b", "openai", "lane", {}, 0.3)
    clock.advance(1)
    limited(there, clock)
    assert await there.flush() == 1
    clock.advance(1)
    here.success("b", "openai", "lane", {}, 0.3)  # no quota news: here never heard of the 429
    assert await here.flush() == 1  # it merges what the store holds before writing over it
    assert here.status("b") == Status.EXHAUSTED
    stored = await read_persisted(store, SETTINGS.window)
    assert [s.status(clock.now(), SETTINGS.ttl) for s in stored[0]] == [Status.EXHAUSTED]

    joining = Signals(store, clock, SETTINGS)
    joining.merge_persisted = True
    joining.success("b", "openai", "lane", {}, 0.3)
    assert await joining.load() == 1  # merged, though it had a signal of its own
    assert joining.status("b") == Status.EXHAUSTED

    alone = Signals(store, clock, SETTINGS)  # the embedded default: a load fills gaps only
    alone.success("b", "openai", "lane", {}, 0.3)
    await alone.load()
    assert alone.status("b") == Status.AVAILABLE
