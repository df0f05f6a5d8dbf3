"""Reconciliation: the declared backends against what they really serve, on a schedule.

One cycle refreshes every backend it is given concurrently, each bounded by its own deadline,
so a dead backend never delays the others. The declared state (config file plus database) is
re-read every ``declared_reload`` seconds: a new backend gets a refresher and is refreshed at
once, a changed one is rebuilt, a removed one loses its lanes. Each backend is refreshed every
interval of its family (or its own ``refresh_interval``), a failed refresh sooner (with backoff:
``Refresher.next_in``); expired lanes are swept on every pass.

A request for a model that no lane serves may ask for one extra refresh of the local backends
(``refresh_local``): debounced, and shared by every request that asks meanwhile, so a backend
started after laneway becomes routable on the first request for its model.

In cluster mode (a ``Sharing``; ``laneway.inventory.sharing``) the schedule refreshes only the
backends this replica leads, an interval (or a failure's backoff) after the last refresh anyone
shared, so a backend is refreshed once per interval across the cluster and a new leader does
not refresh again what its predecessor just did. Every refresh made here, for whatever reason,
is shared; the others' are adopted as they are told of them (``adopt``), and a followed backend's
snapshot is read once per interval as the backstop for a missed event (one that has none is
refreshed here). Without a ``Sharing`` (the embedded default) this replica leads everything.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import Any

from laneway.config.schema import BackendConfig
from laneway.errors import LanewayError, NoLaneAvailable, UpstreamError
from laneway.inventory.cooldown import Cooldown
from laneway.inventory.discovery import model_allowed
from laneway.inventory.lanes import Health
from laneway.inventory.refresher import BackendStatus, RefreshContext, Refresher
from laneway.inventory.sharing import BackendSnapshot, Sharing
from laneway.providers.base import Provider

log = logging.getLogger("laneway.inventory")


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Declared = Callable[[], Awaitable[dict[str, BackendConfig]]]
BuildProvider = Callable[[str, BackendConfig], Provider]


class Reconciler:
    def __init__(
        self,
        ctx: RefreshContext,
        *,
        declared: Declared,
        build_provider: BuildProvider,
        on_change: Callable[[frozenset[str]], None] | None = None,
        sharing: Sharing | None = None,
    ) -> None:
        self.ctx = ctx
        self.declared = declared
        self.build_provider = build_provider
        self.on_change = on_change
        # Told, after the store has it, of a cooldown a call began (the gateway tells the other
        # replicas: they need not each make a refused call of their own to learn it).
        self.on_refused: Callable[[str], Awaitable[None]] | None = None
        # Told of a lane a call found stale (the gateway tells the other replicas, which take it
        # out of rotation too; their own refresh, or the discovery leader's, decides it).
        self.on_stale: Callable[[str], Coroutine[Any, Any, None]] | None = None
        self.refreshers: dict[str, Refresher] = {}
        # Shared with the router, which reads it on every request: mutated in place, never replaced.
        self.providers: dict[str, Provider] = {}
        self._due: dict[str, float] = {}  # backend -> next refresh, on clock.monotonic()
        self._declared_at = -math.inf
        self._miss: asyncio.Task[list[BackendStatus]] | None = None
        self._miss_at = -math.inf
        # The schedule and POST /admin/refresh may both re-read the declared state; interleaved,
        # both would add the same new backend and the first one's HTTP client would leak.
        self._sync_lock = asyncio.Lock()
        # Work nobody awaits: refreshes of stale lanes, cooldown writes. Ended by aclose: a cooldown
        # not written by then is started again by the next refused call or refresh.
        self._background: set[asyncio.Task[object]] = set()
        # Cluster mode: who leads what, and the snapshots replicas share; None: this one alone.
        self.sharing = sharing
        # backend -> the start (wall clock) of the newest refresh of it shared or adopted here
        self._shared_at: dict[str, float] = {}
        self._wake = asyncio.Event()  # the schedule changed under the sleeping ``run``: look again
        if sharing is not None:
            sharing.attach(self)

    # -- declared state --------------------------------------------------------------------

    @property
    def configs(self) -> dict[str, BackendConfig]:
        return {name: r.config for name, r in self.refreshers.items()}

    async def sync_declared(self) -> bool:
        """Bring the refreshers in line with the declared backends; True if anything changed.
        If the declared state cannot be read, the backends we have stay as they are."""
        async with self._sync_lock:
            return await self._sync_declared()

    async def _sync_declared(self) -> bool:
        self._declared_at = self.ctx.clock.monotonic()
        try:
            declared = await self.declared()
        except LanewayError as exc:
            log.warning(
                "could not read the declared backends; keeping the current ones", extra={"error": exc.message}
            )
            return False
        changed = False
        for name in sorted(set(self.refreshers) - set(declared)):
            await self._drop(name)
            self.ctx.inventory.remove_backend(name, reason="backend no longer declared")
            log.info("backend removed", extra={"backend": name})
            changed = True
        for name, config in declared.items():
            current = self.refreshers.get(name)
            if current is not None and current.config == config:
                continue
            if current is not None:
                await self._drop(name)
                log.info("backend changed", extra={"backend": name})
            else:
                log.info("backend added", extra={"backend": name, "provider": config.provider})
            self._add(name, config)
            changed = True
        if changed and self.on_change is not None:
            self.on_change(frozenset(self.refreshers))
        return changed

    def _add(self, name: str, config: BackendConfig) -> None:
        provider = self.build_provider(name, config)
        self.refreshers[name] = Refresher(name, config, provider, self.ctx)
        self.providers[name] = provider
        self._due[name] = -math.inf  # refresh at the next pass

    async def _drop(self, name: str) -> None:
        refresher = self.refreshers.pop(name)
        self.providers.pop(name, None)
        self._due.pop(name, None)
        self._shared_at.pop(name, None)
        # Requests still running on it see a closed client and fail over like on any transport error.
        await refresher.aclose()

    # -- refreshing ------------------------------------------------------------------------

    async def cycle(
        self, names: Iterable[str] | None = None, *, use_cache: bool = True
    ) -> list[BackendStatus]:
        """Refresh the named backends (default: all) concurrently, then sweep expired lanes."""
        chosen = [
            self.refreshers[n] for n in (self.refreshers if names is None else names) if n in self.refreshers
        ]
        results = await asyncio.gather(*(self._tick(r, use_cache) for r in chosen), return_exceptions=True)
        for refresher, result in zip(chosen, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("refresher crashed", extra={"backend": refresher.name}, exc_info=result)
        self.sweep()
        return [r.status for r in chosen]

    async def _tick(self, refresher: Refresher, use_cache: bool) -> None:
        try:
            await refresher.tick(use_cache=use_cache)
        finally:
            self._due[refresher.name] = self.ctx.clock.monotonic() + refresher.next_in()
        if self.sharing is not None:
            await self._share(refresher)

    def sweep(self) -> int:
        return self.ctx.inventory.sweep(self.ctx.clock.now())

    async def refresh_local(self) -> bool:
        """One refresh of the local backends for a model nobody serves. Debounced (at most one
        per ``miss_refresh_debounce``) and shared: concurrent callers wait for the same one.
        False if it did not run (debounced, or no local backends)."""
        if self._miss is None or self._miss.done():
            now = self.ctx.clock.monotonic()
            local = [n for n, r in self.refreshers.items() if r.config.effective_tier == "local"]
            if not local or now - self._miss_at < self.ctx.settings.miss_refresh_debounce:
                return False
            self._miss_at = now
            self._miss = asyncio.create_task(self.cycle(local), name="refresh-on-miss")
        await asyncio.shield(self._miss)
        return True

    async def run(self) -> None:
        """The schedule: forever, refresh what is due, re-read the declared state when due,
        sweep, and sleep until the next thing is due."""
        while True:
            self._wake.clear()  # a change of leadership from now on cuts the coming sleep short
            try:
                await self.run_once()
            except Exception:  # a bug in one pass must not stop discovery for good
                log.exception("reconciliation pass failed")
            wake = min([*self._due.values(), self._declared_at + self.ctx.settings.declared_reload])
            pause = max(wake - self.ctx.clock.monotonic(), 0.01)
            if self.sharing is None:
                await self.ctx.clock.sleep(pause)
            else:
                await self._nap(pause)

    async def run_once(self) -> None:
        """One pass of the schedule: what is due now, and a sweep."""
        clock, settings = self.ctx.clock, self.ctx.settings
        if clock.monotonic() - self._declared_at >= settings.declared_reload:
            await self.sync_declared()
        now = clock.monotonic()
        due = [name for name, at in self._due.items() if at <= now]
        if due:
            await self._run_due(due)
        else:
            self.sweep()

    async def _run_due(self, due: list[str]) -> None:
        """Refresh the due backends this replica leads (alone: all); read the snapshots of the
        others, refreshing here only those nobody shared."""
        sharing = self.sharing
        if sharing is None:
            await self.cycle(due)
            return
        refresh = [name for name in due if sharing.leads(name)]
        followed = [name for name in due if not sharing.leads(name)]
        if followed:
            refresh += await self._follow(followed)
        await self.cycle(refresh)

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds`` on the clock, or less if ``leadership_changed`` wakes the schedule."""
        sleeping = asyncio.ensure_future(self.ctx.clock.sleep(seconds))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeping, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            woken.cancel()
            await asyncio.gather(sleeping, woken, return_exceptions=True)

    # -- sharing (cluster mode) --------------------------------------------------------------

    def scopes(self) -> dict[str, str]:
        return {name: self.refreshers[name].sharing_scope for name in sorted(self.refreshers)}

    async def warm_up(self) -> None:
        """The refresh at start. Alone: of every backend. In a cluster the snapshots the others
        shared are adopted (a replica that joins serves the current inventory at once, without
        calling the upstreams) and only the backends nobody shared are refreshed here."""
        if self.sharing is None:
            await self.cycle()
            return
        names = sorted(self.refreshers)
        found = await self.sharing.read(names)
        for snapshot in (found or {}).values():
            self.adopt(snapshot)
        await self.cycle(names if found is None else [name for name in names if name not in found])

    async def _follow(self, names: list[str]) -> list[str]:
        """The backstop of backends led elsewhere (each read once per interval): adopt their
        snapshots if newer than what this replica has. Returns the backends to refresh here:
        those with no snapshot (new, or the store lost it), or all if the store is unreadable."""
        found = await self.sharing.read(names) if self.sharing is not None else None
        if found is None:
            return names
        now = self.ctx.clock.monotonic()
        for name in names:
            snapshot = found.get(name)
            if snapshot is not None and not self.adopt(snapshot) and name in self.refreshers:
                self._due[name] = now + self.refreshers[name].interval  # nothing new: next backstop
        return [name for name in names if name not in found]

    def adopt(self, snapshot: BackendSnapshot) -> bool:
        """Take up another replica's refresh of a backend (``Refresher.adopt``); False (and
        nothing done) unless it is of the backend as declared here, and newer than the last this
        replica made or adopted."""
        name = snapshot.backend
        refresher = self.refreshers.get(name)
        if (
            refresher is None
            or snapshot.scope != refresher.sharing_scope
            or snapshot.refreshed_at <= self._shared_at.get(name, -math.inf)
        ):
            return False
        self._shared_at[name] = snapshot.refreshed_at
        refresher.adopt(snapshot)
        self._due[name] = self._next_due(refresher)
        return True

    def leadership_changed(self, gained: frozenset[str], lost: frozenset[str]) -> None:
        """Reschedule what this replica now leads or follows, and wake the schedule. A backend
        gained has its snapshot stored again (if the store lost it: Redis restarted), so the
        others need not refresh it themselves."""
        for name in sorted(gained | lost):
            refresher = self.refreshers.get(name)
            if refresher is None:
                continue
            self._due[name] = self._next_due(refresher)
            if name in gained:
                self._spawn(self._republish(refresher), f"republish-{name}")
        self._wake.set()

    def _next_due(self, refresher: Refresher) -> float:
        """When (monotonic) a backend is next due here. Its leader refreshes it an interval (or a
        failure's backoff) after the newest refresh anyone shared, so leadership that passes on
        costs no extra refresh, and one long overdue (the leader died) is refreshed at once. A
        follower reads its snapshot an interval from now: the backstop for a missed event."""
        clock, sharing = self.ctx.clock, self.sharing
        if sharing is not None and not sharing.leads(refresher.name):
            return clock.monotonic() + refresher.interval
        shared = self._shared_at.get(refresher.name)
        if shared is None:
            return -math.inf
        return clock.monotonic() + (shared - clock.now()) + refresher.next_in()

    async def _share(self, refresher: Refresher) -> None:
        """Tell the others what a refresh here found: once per refresh (callers that joined it
        share nothing more), and only if no newer one was adopted meanwhile."""
        sharing, st = self.sharing, refresher.status
        at = st.last_attempt
        if sharing is None or at is None or at <= self._shared_at.get(refresher.name, -math.inf):
            return
        self._shared_at[refresher.name] = at
        st.refreshed_by = sharing.replica
        await self._republish(refresher)

    async def _republish(self, refresher: Refresher) -> None:
        """Store the backend's snapshot as this replica has it (the store keeps the newest), kept
        as long as its lanes live: a lane lifetime, or longer for lanes held denied."""
        if self.sharing is None or (snapshot := refresher.snapshot(self.sharing.replica)) is None:
            return
        now = self.ctx.clock.now()
        lifetime = self.ctx.settings.lane_ttl_intervals * refresher.interval
        held = max((lane.expires_at or now for lane in snapshot.lanes), default=now) - now
        await self.sharing.share(snapshot, ttl=max(lifetime, held))

    # -- reading -----------------------------------------------------------------------------

    def config(self, backend: str) -> BackendConfig | None:
        refresher = self.refreshers.get(backend)
        return refresher.config if refresher is not None else None

    def credential_refused(self, backend: str, exc: UpstreamError) -> None:
        """A call was refused for bad credentials: the same cooldown as a refused refresh. It
        takes effect at once; the store write is bookkeeping, done off the request path (a store
        that hangs must not hold the request), by a task ``aclose`` ends."""
        refresher = self.refreshers.get(backend)
        if refresher is not None:
            self._spawn(self._refused(refresher, refresher.refused(exc)), f"cooldown-{backend}")

    async def _refused(self, refresher: Refresher, cooldown: Cooldown) -> None:
        await refresher.persist(cooldown)
        if self.on_refused is not None:
            await self.on_refused(refresher.name)

    def lane_stale(self, lane_id: str) -> None:
        """The backend said 404 for a lane's model: out of rotation until a refresh (started now)
        confirms it (it comes back) or not (it goes, as an orphan)."""
        lane = self.ctx.inventory.get(lane_id)
        if lane is None or lane.health == Health.DENIED:
            return
        self.ctx.inventory.set_health([lane_id], Health.STALE)
        log.warning("lane stale", extra={"lane": lane_id})
        if self.on_stale is not None:
            self._spawn(self.on_stale(lane_id), f"stale-{lane_id}")
        if lane.backend in self.refreshers:
            # The backend itself must answer: a cached model list would "confirm" the lane it
            # just disowned and put it back in rotation for up to the cache's TTL.
            self._spawn(self.cycle([lane.backend], use_cache=False), f"refresh-stale-{lane.backend}")

    def _spawn(self, work: Coroutine[Any, Any, object], name: str) -> None:
        """Run ``work`` in the background, owned by the reconciler (``aclose`` ends it)."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def allows(self, backend: str, model: str) -> bool:
        """The backend's allow/deny policy, checked again at dispatch (fail closed: an unknown
        backend allows nothing)."""
        refresher = self.refreshers.get(backend)
        return refresher is not None and model_allowed(refresher.config, model)

    def serves(self, model: str) -> bool:
        """Does a declared backend serve ``model`` (declared, or found by a refresh since start)?
        A lane in the inventory counts too: a backend's lanes outlive a failed refresh."""
        return any(model in r.known for r in self.refreshers.values()) or any(
            lane.backend in self.refreshers for lane in self.ctx.inventory.by_model(model)
        )

    def unavailable(self, name: str) -> NoLaneAvailable | None:
        """A name no lane serves now that a failing backend is known to serve (declared, or found
        by its last good refresh; as ``model`` or ``backend/model``): the model is unavailable
        now (503, which backends, since when), not unknown (404). None if no failing backend knows it."""
        prefix, sep, model = name.partition("/")
        now, mono = self.ctx.clock.now(), self.ctx.clock.monotonic()
        why: list[str] = []
        waits: list[float] = []
        for backend, refresher in sorted(self.refreshers.items()):
            st = refresher.status
            if st.failing_since is None or not (
                name in refresher.known or (sep and prefix == backend and model in refresher.known)
            ):
                continue
            if st.unset_key_env is not None:
                why.append(f"'{backend}' (its api_key_env {st.unset_key_env} is not set)")
                waits.append(self.ctx.settings.declared_reload)
            elif st.cooldown_until is not None:
                why.append(f"'{backend}' (its credentials were refused; retried after the cooldown)")
                waits.append(st.cooldown_until - now)
            else:
                why.append(f"'{backend}' (unreachable since {_utc(st.failing_since)})")
                waits.append(self._due.get(backend, mono) - mono)
        if not why:
            return None
        return NoLaneAvailable(
            f"The model '{name}' is known but cannot be served now: its backend(s) {', '.join(why)}",
            retry_after=max(1.0, min(waits)),
        )

    def statuses(self) -> list[BackendStatus]:
        statuses = [self.refreshers[n].status for n in sorted(self.refreshers)]
        if self.sharing is not None:  # who leads each one now, as of the last renewal
            for st in statuses:
                st.leader = self.sharing.leader(st.name)
        return statuses

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._miss is not None and not self._miss.done():
            self._miss.cancel()
            await asyncio.wait((self._miss,))
        for name in list(self.refreshers):
            await self._drop(name)
