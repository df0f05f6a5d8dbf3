"""Every backend's runtime signal: observed on the request path, persisted off it.

The router calls ``success``/``failure`` after each upstream call: a header parse and a few
field writes, no I/O. Changed signals are written to the runtime store every ``flush_interval``
(the local cache directory in the embedded default, so a restart keeps them and ``laneway
signals`` can read them from another process; Redis in cluster mode), each with the signal TTL.

In cluster mode the other replicas are told at once when an observation changes what routing
does with a backend (``BackendSignal.routing``: its quota used up or reset, it announced it is
unavailable or answered again, its last call failed or succeeded): ``on_change`` is called with
the backend's name, synchronously and without I/O (the cluster part sends it off the request
path, coalesced). What they tell back is merged (``merge``); with ``merge_persisted`` a flush
first merges what the store holds, so replicas writing one key in turn never drop each other's
newer facts, and ``load`` merges rather than only filling the gaps.

Local backends are also probed (``refresh``): one cheap call (``/v1/models``, ``/api/tags``, never
a completion) bounded by ``refresh_deadline`` on the injected clock; concurrent refreshes of one
backend share one probe. Cloud backends are never probed: what their traffic says is enough.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import orjson

from laneway.clock import Clock, within
from laneway.config.schema import SignalsConfig
from laneway.errors import LanewayError, UpstreamError, UpstreamStatusError, Verdict, classify
from laneway.signals.headers import parse_rate_limits
from laneway.signals.state import BackendSignal, Routing, Status
from laneway.storage.runtime import KeyValueStore

log = logging.getLogger("laneway.signals")

PREFIX = "signals:"

Probe = Callable[[], Awaitable[Mapping[str, str]]]


class Signals:
    def __init__(self, store: KeyValueStore, clock: Clock, settings: SignalsConfig) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self._signals: dict[str, BackendSignal] = {}
        self._dirty: set[str] = set()
        self._probes: dict[str, asyncio.Task[None]] = {}
        # Cluster mode (laneway.cluster.signals): told of every change that matters for routing.
        self.on_change: Callable[[str], None] | None = None
        self.merge_persisted = False

    def signal(self, backend: str, family: str) -> BackendSignal:
        sig = self._signals.get(backend)
        if sig is None or sig.family != family:
            sig = self._signals[backend] = BackendSignal(backend, family, window=self.settings.window)
        return sig

    def get(self, backend: str) -> BackendSignal | None:
        return self._signals.get(backend)

    def backends(self) -> list[str]:
        """The backends this replica has a signal of."""
        return sorted(self._signals)

    # -- observing (the request path: no I/O) ------------------------------------------------

    def success(
        self, backend: str, family: str, lane: str | None, headers: Mapping[str, str], elapsed: float | None
    ) -> None:
        """A call succeeded (or a probe did: no ``elapsed``, a probe's time is not a model's).
        For a stream ``elapsed`` is None here: ``first_byte`` and ``stream_ended`` bring its times."""
        now = self.clock.now()
        sig = self.signal(backend, family)
        before = self._routing(sig, now)
        sig.apply_limits(parse_rate_limits(family, headers, now), now, self.settings.exhausted_for)
        sig.succeeded(now)
        if elapsed is not None:
            self._record(sig, lane, "latency", elapsed)
        self._observed(sig, before, now)

    def first_byte(self, backend: str, lane: str | None, ttft: float) -> None:
        sig = self._signals.get(backend)
        if sig is not None:
            self._record(sig, lane, "ttft", ttft)

    def stream_ended(self, backend: str, lane: str | None, total: float) -> None:
        sig = self._signals.get(backend)
        if sig is not None:
            self._record(sig, lane, "latency", total)

    def _record(self, sig: BackendSignal, lane: str | None, window: str, seconds: float) -> None:
        """Into the backend's window and the lane's."""
        getattr(sig, window).record(seconds)
        if lane:
            getattr(sig.lane(lane), window).record(seconds)
        self._dirty.add(sig.backend)

    def failure(
        self, backend: str, family: str, lane: str | None, exc: LanewayError, verdict: Verdict
    ) -> None:
        """A call failed; ``verdict`` (``classify``) says what that means for the backend: used-up
        quota, announced unavailability, ill health (a refused credential too: the backend cannot
        serve), or nothing (the request's own fault). Rate-limit headers on an error answer count
        like on any answer, but the Retry-After of an unavailable backend is not about its quota."""
        if not (isinstance(exc, UpstreamStatusError) or verdict.unhealthy or verdict.auth_failure):
            return  # a busy pool, the request's own fault: nothing about the backend
        now = self.clock.now()
        sig = self.signal(backend, family)
        before = self._routing(sig, now)
        if isinstance(exc, UpstreamStatusError):
            limits = parse_rate_limits(family, exc.upstream_headers, now)
            if verdict.unavailable:
                limits = replace(limits, retry_at=None)
            sig.apply_limits(limits, now, self.settings.exhausted_for)
        if verdict.rate_limited:
            sig.rate_limited(now, exc.message, self.settings.exhausted_for)
        elif verdict.unavailable and verdict.retry_after is not None:
            sig.unavailable(now, exc.message, now + verdict.retry_after)
        elif verdict.unhealthy or verdict.auth_failure:
            sig.failed(now, exc.message)
        self._observed(sig, before, now)

    def _routing(self, sig: BackendSignal, now: float) -> Routing | None:
        """What routing does with the backend before an observation; only worth computing when
        someone is to be told of a change (cluster mode)."""
        return sig.routing(now) if self.on_change is not None else None

    def _observed(self, sig: BackendSignal, before: Routing | None, now: float) -> None:
        """To be persisted; and told to the other replicas if routing would now treat the backend
        differently (a call that only moved a counter or a latency window is not worth an event)."""
        self._dirty.add(sig.backend)
        if self.on_change is not None and before is not None and sig.routing(now) != before:
            self.on_change(sig.backend)

    def merge(self, other: BackendSignal) -> None:
        """What another replica observed of a backend (``BackendSignal.merge``): taken where it is
        newer than what this one knows. Not told on (it was told already), not persisted again."""
        sig = self._signals.get(other.backend)
        if sig is None or sig.family != other.family:
            self._signals[other.backend] = other
        else:
            sig.merge(other)

    # -- reading -----------------------------------------------------------------------------

    def held_until(self, backend: str) -> float:
        """Until when (wall clock) the backend asked not to be called (0: it did not)."""
        sig = self._signals.get(backend)
        return 0.0 if sig is None else sig.held_until()

    def status(self, backend: str) -> Status:
        sig = self._signals.get(backend)
        return sig.status(self.clock.now(), self.settings.ttl) if sig else Status.UNKNOWN

    def snapshot(self) -> list[dict[str, Any]]:
        now, ttl = self.clock.now(), self.settings.ttl
        return [self._signals[b].as_dict(now, ttl) for b in sorted(self._signals)]

    # -- probing -----------------------------------------------------------------------------

    async def refresh(self, backend: str, family: str, probe: Probe) -> None:
        """Probe a backend now, or join the probe already running for it."""
        task = self._probes.get(backend)
        if task is None or task.done():
            task = self._probes[backend] = asyncio.create_task(
                self._probe(backend, family, probe), name=f"probe-{backend}"
            )
        await asyncio.shield(task)

    async def _probe(self, backend: str, family: str, probe: Probe) -> None:
        deadline = self.settings.refresh_deadline
        try:
            headers = await within(self.clock, deadline, probe())
        except UpstreamError as exc:
            self.failure(backend, family, None, exc, classify(exc, now=self.clock.now()))
        except TimeoutError:
            now = self.clock.now()
            sig = self.signal(backend, family)
            before = self._routing(sig, now)
            sig.failed(now, f"probe timed out after {deadline:g}s")
            self._observed(sig, before, now)
        else:
            self.success(backend, family, None, headers, None)

    # -- persistence -------------------------------------------------------------------------

    async def load(self) -> int:
        """Read the persisted signals (a restart keeps what was learnt). Unreadable ones are skipped.
        A signal this replica already has keeps what it knows unless ``merge_persisted`` (cluster
        mode: the store holds the other replicas' observations too; newer ones are merged in)."""
        try:
            found, unreadable = await read_persisted(self.store, self.settings.window)
        except LanewayError as exc:
            log.warning("could not read persisted signals", extra={"error": exc.message})
            return 0
        if unreadable:
            log.warning("skipped %d unreadable persisted signal(s)", unreadable)
        for sig in found:
            if self.merge_persisted:
                self.merge(sig)
            else:
                self._signals.setdefault(sig.backend, sig)
        return len(found)

    async def flush(self) -> int:
        """Persist the signals that changed since the last flush."""
        dirty, self._dirty = self._dirty, set()
        written = 0
        for backend in sorted(dirty):
            sig = self._signals.get(backend)
            if sig is None:
                continue
            try:
                if self.merge_persisted:
                    await self._merge_stored(backend)
                await self.store.set(PREFIX + backend, orjson.dumps(sig.to_record()), ttl=self.settings.ttl)
            except LanewayError as exc:
                self._dirty.add(backend)  # try again next time
                log.warning("could not persist a signal", extra={"backend": backend, "error": exc.message})
            else:
                written += 1
        return written

    async def _merge_stored(self, backend: str) -> None:
        """Merge what the store holds of ``backend`` (another replica's newer facts) before writing
        over it. Not atomic: two replicas flushing at once may each miss the other's latest, which
        the next flush and the events between them mend."""
        raw = await self.store.get(PREFIX + backend)
        if raw is None:
            return
        try:
            self.merge(BackendSignal.from_record(orjson.loads(raw), self.settings.window))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            pass  # torn or another version's: overwritten by ours

    async def run(self, local: Callable[[], Mapping[str, tuple[str, Probe]]]) -> None:
        """Forever: persist what changed every ``flush_interval``; probe the local backends
        (``local()``: name -> (family, probe)) every ``probe_interval``."""
        clock, settings = self.clock, self.settings
        next_probe = clock.monotonic()
        while True:
            try:
                if clock.monotonic() >= next_probe:
                    next_probe = clock.monotonic() + settings.probe_interval
                    targets = local()
                    await asyncio.gather(
                        *(self.refresh(n, fam, probe) for n, (fam, probe) in targets.items())
                    )
                await self.flush()
            except Exception:  # one bad pass must not stop the signals for good
                log.exception("signal pass failed")
            await clock.sleep(min(settings.flush_interval, max(next_probe - clock.monotonic(), 0.01)))

    async def aclose(self) -> None:
        for task in self._probes.values():
            task.cancel()
        await asyncio.gather(*self._probes.values(), return_exceptions=True)
        await self.flush()


async def read_persisted(store: KeyValueStore, window: int) -> tuple[list[BackendSignal], int]:
    """The signals persisted in ``store`` (sorted by backend), and how many records could not be
    read (another version's, or torn). ``laneway signals`` reads them this way, without a gateway."""
    found, unreadable = [], 0
    for raw in (await store.scan(PREFIX)).values():
        try:
            found.append(BackendSignal.from_record(orjson.loads(raw), window))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            unreadable += 1
    return sorted(found, key=lambda s: s.backend), unreadable
