"""The refresher: one backend's discovery step, from its upstream to the inventory.

A tick, in order (reference: the scoped refresher):
1. skip if the backend's credential is in an auth cooldown (its lanes stay out of rotation);
2. compute the lanes: the model list (from the cache for cloud backends), bounded by a deadline
   on the injected clock;
3. write the new lanes FIRST, then delete the orphans of the previous snapshot; a compute that
   fails or finds nothing deletes nothing.

A refused credential (401/403 or a message that says so) starts the cooldown and takes the
backend's lanes out of rotation (health ``denied``); the first successful refresh after the
cooldown brings them back. A timeout is never an auth failure. Ticks of one backend are
coalesced: a scheduled tick and an on-demand one share a single fetch.

A backend whose ``api_key_env`` names a variable that is not set is never called: without its
key the upstream would refuse (a 401, and a cooldown that names nothing) or, worse, serve the
request under no one's key. Its lanes are simply absent, and its status says which variable to
set. laneway reads its environment once, so setting it takes a restart.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from laneway.clock import Clock, within
from laneway.config.schema import BackendConfig, InventoryConfig
from laneway.errors import LanewayError, UpstreamError, classify
from laneway.inventory.cooldown import AuthCooldowns, Cooldown, credential_fingerprint
from laneway.inventory.discovery import lanes_for
from laneway.inventory.lanes import Health
from laneway.inventory.modelcache import ListScope, ModelListCache
from laneway.inventory.sharing import DISCOVERY_HEALTH, BackendSnapshot, sharing_scope, status_fields
from laneway.inventory.store import Inventory
from laneway.providers.base import DiscoveryNotes, ModelInfo, Provider

log = logging.getLogger("laneway.inventory")

CLOUD_TIERS = frozenset({"cloud", "frontier"})


@dataclass
class BackendStatus:
    """What the last refreshes of one backend found: for /admin/backends, /readyz and the CLI.
    Times are wall-clock seconds."""

    name: str
    family: str
    tier: str
    base_url: str
    interval: float
    last_refresh: float | None = None  # the last successful one
    last_attempt: float | None = None
    last_error: str | None = None
    source: str | None = None  # where the last model list came from: "upstream" or "cache"
    models: int = 0  # models in the last list
    missing_models: list[str] = field(default_factory=list)  # declared, not found upstream
    excluded_models: list[str] = field(default_factory=list)  # found, excluded by allow/deny
    lanes: int = 0
    cooldown_until: float | None = None
    cooldown_reason: str | None = None
    failing_since: float | None = None  # the first of the refreshes failing since the last success
    failures: int = 0  # refreshes failed in a row (0: the last one worked)
    unset_key_env: str | None = None  # the api_key_env variable that is not set: never called
    # Cluster mode (None in the embedded default): the replica that made the refresh shown here
    # (this one, or the one whose snapshot it adopted), and the one leading its discovery now.
    refreshed_by: str | None = None
    leader: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RefreshContext:
    """What every refresher shares."""

    inventory: Inventory
    cooldowns: AuthCooldowns
    cache: ModelListCache
    clock: Clock
    settings: InventoryConfig


class Refresher:
    def __init__(self, name: str, config: BackendConfig, provider: Provider, ctx: RefreshContext) -> None:
        self.name = name
        self.config = config
        self.provider = provider
        self.ctx = ctx
        self.credential = credential_fingerprint(config)
        self.cache_scope = ListScope.of(name, config)
        self.sharing_scope = sharing_scope(name, config)  # cluster mode: what its discovery is shared under
        self.interval = ctx.settings.interval(config)
        self.cloud = config.effective_tier in CLOUD_TIERS
        self.status = BackendStatus(
            name, config.provider, config.effective_tier, config.base_url, self.interval
        )
        # The models this backend is known to serve: declared, or found by its last successful
        # refresh. Kept while it is unreachable, so a request for one of them is told the model is
        # unavailable now (503), not that it does not exist (404).
        self.known: frozenset[str] = frozenset(config.declared)
        if config.api_key_env and not config.resolve_api_key():
            self.status.unset_key_env = config.api_key_env
        self._said_unset = False  # the warning about it is logged once, not every interval
        self._running: asyncio.Task[None] | None = None
        self._running_cached = False  # whether the running refresh may answer from the cache

    async def tick(self, *, use_cache: bool = True) -> BackendStatus:
        """Refresh now, or join the refresh already running. Never raises but for cancellation;
        a caller that is cancelled leaves the shared refresh running for the others. A caller
        that wants the upstream's own list does not settle for a running refresh that may be
        answered from the cache: it waits for it, then asks again."""
        if self._running is not None and not self._running.done():
            await asyncio.shield(self._running)
            if use_cache or not self._running_cached:
                return self.status
        if self._running is None or self._running.done():
            self._running_cached = use_cache
            self._running = asyncio.create_task(self._tick(use_cache), name=f"refresh-{self.name}")
        await asyncio.shield(self._running)
        return self.status

    async def _tick(self, use_cache: bool) -> None:
        ctx, st = self.ctx, self.status
        st.last_attempt, st.refreshed_by = ctx.clock.now(), None  # made here (the reconciler names it)
        if await self._refresh(use_cache):
            if st.failing_since is not None:
                log.info("refresh recovered", extra={"backend": self.name, "failing_since": st.failing_since})
            st.failing_since, st.failures = None, 0
        else:
            st.failures += 1
            if st.failing_since is None:
                st.failing_since = st.last_attempt

    def next_in(self) -> float:
        """Seconds from now to the next scheduled refresh: the interval, or sooner after a failed
        one (``retry_backoff``, doubling with each failure in a row, up to the interval), so a
        backend whose model list failed once (at start-up, say) gets its lanes as soon as it
        answers again. A refused credential waits out its cooldown, an unset key a restart."""
        st = self.status
        if st.failures == 0 or st.cooldown_until is not None or st.unset_key_env is not None:
            return self.interval
        backoff = self.ctx.settings.retry_backoff * 2.0 ** min(st.failures - 1, 30)
        return min(self.interval, backoff)

    async def _refresh(self, use_cache: bool) -> bool:
        """One refresh; True if the backend (or the cache) answered with its model list."""
        ctx, st = self.ctx, self.status
        if st.unset_key_env:
            self._key_unset(st.unset_key_env)
            return False
        deadline = ctx.settings.refresh_deadline
        try:
            # Bounded like the model list: a refresh a request waits on (a model nobody serves)
            # must not hang behind a runtime store that stopped answering.
            cooldown = await within(ctx.clock, deadline, ctx.cooldowns.get(self.credential))
        except (LanewayError, TimeoutError) as exc:  # the store is away: refreshing is the safer side
            error = exc.message if isinstance(exc, LanewayError) else f"no answer in {deadline:g}s"
            log.warning("could not read auth cooldowns", extra={"backend": self.name, "error": error})
            cooldown = None
        if cooldown is not None:
            st.cooldown_until, st.cooldown_reason = cooldown.until, cooldown.reason
            st.last_error = f"credentials refused, refreshes paused: {cooldown.reason}"
            st.source = None
            self._deny(cooldown.until)
            return False
        st.cooldown_until = st.cooldown_reason = None
        try:
            models, st.source = await self._models(use_cache)
        except UpstreamError as exc:
            await self._failed(exc)
            return False
        except TimeoutError:
            st.source = None
            st.last_error = f"refresh timed out after {ctx.settings.refresh_deadline:g}s"
            self._log_failure(st.last_error)
            return False
        self._write(models)
        return True

    def _key_unset(self, variable: str) -> None:
        st = self.status
        st.source = None
        st.last_error = (
            f"api_key_env {variable} is not set: not called, no lanes "
            "(set it in laneway's environment and restart)"
        )
        if not self._said_unset:
            self._said_unset = True
            log.warning(
                "backend '%s': api_key_env %s is not set; its models are not served until it is set "
                "and laneway restarted",
                self.name,
                variable,
                extra={"backend": self.name, "api_key_env": variable},
            )

    async def _models(self, use_cache: bool) -> tuple[list[ModelInfo], str]:
        ctx = self.ctx
        if self.cloud and use_cache:
            try:
                cached = await ctx.cache.get(self.cache_scope)
            except LanewayError as exc:
                log.warning("model-list cache unreadable", extra={"backend": self.name, "error": exc.message})
                cached = None
            if cached is not None:
                return cached, "cache"
        models = await within(ctx.clock, ctx.settings.refresh_deadline, self.provider.list_models())
        if self.cloud:
            try:
                await ctx.cache.put(self.cache_scope, models, ctx.clock.now())
            except LanewayError as exc:
                log.warning("model-list cache unwritable", extra={"backend": self.name, "error": exc.message})
        return models, "upstream"

    def refused(self, exc: UpstreamError) -> Cooldown:
        """The credential was refused (by a call or a refresh): its cooldown starts now, in this
        process at once (the status says so, the lanes are out of rotation); the cooldown returned
        is for the caller to ``persist``, off the request path."""
        st = self.status
        # Say whose key it was: the operator fixes the variable, not the upstream.
        variable = self.config.api_key_env
        reason = f"{exc.message} (the key in api_key_env {variable})" if variable else exc.message
        st.last_error, st.source = reason, None
        cooldown = self.ctx.cooldowns.begin(self.credential, backend=self.name, reason=reason)
        st.cooldown_until, st.cooldown_reason = cooldown.until, cooldown.reason
        log.warning(
            "credentials refused: lanes out of rotation for the cooldown",
            extra={
                "backend": self.name,
                "error": reason,
                "lanes": self._deny(cooldown.until),
                "until": cooldown.until,
            },
        )
        return cooldown

    async def persist(self, cooldown: Cooldown) -> None:
        """Write the cooldown to the runtime store (replicas sharing it share the cooldown, and the
        next refresh is skipped by it). A store that is away is only logged: this process keeps
        the cooldown in its lanes and status, and a refused refresh starts it again."""
        try:
            await self.ctx.cooldowns.put(cooldown)
        except LanewayError as exc:
            log.warning("could not store auth cooldown", extra={"backend": self.name, "error": exc.message})

    async def _failed(self, exc: UpstreamError) -> None:
        """A failed refresh deletes nothing; a refused credential also starts the cooldown."""
        if classify(exc, now=self.ctx.clock.now()).auth_failure:
            await self.persist(self.refused(exc))
            return
        self.status.last_error, self.status.source = exc.message, None
        self._log_failure(exc.message)

    def _log_failure(self, error: str) -> None:
        """A warning when the backend starts failing; while it goes on failing, debug lines (the
        status, /admin/backends and the metrics keep saying so): one warning per change of state."""
        level = logging.WARNING if self.status.failing_since is None else logging.DEBUG
        log.log(level, "refresh failed", extra={"backend": self.name, "error": error})

    def _deny(self, until: float) -> int:
        """Take the backend's lanes out of rotation. They stay visible (as ``denied``) for the whole
        cooldown: their expiry is held until a lane lifetime after it ends."""
        inv = self.ctx.inventory
        hold = until + self.ctx.settings.lane_ttl_intervals * self.interval
        lanes = [
            lane.replace(health=Health.DENIED, expires_at=max(lane.expires_at or hold, hold))
            for lane in inv.by_backend(self.name)
            if lane.health != Health.DENIED or (lane.expires_at or hold) < hold
        ]
        inv.write_lanes(lanes)
        return len(lanes)

    def _write(self, models: list[ModelInfo]) -> None:
        ctx, st = self.ctx, self.status
        now = ctx.clock.now()
        found = lanes_for(self.name, self.config, models, inventory=ctx.settings, now=now)
        st.last_refresh, st.models = now, len(models)
        self.known = frozenset(self.config.declared) | {lane.model for lane in found.lanes}
        st.missing_models, st.excluded_models = found.missing, found.excluded
        if self.config.models and not self.config.discovers and len(found.missing) == len(self.config.models):
            st.last_error = f"none of the declared models exists upstream: {', '.join(found.missing)}"
        elif not found.lanes:
            st.last_error = (
                "the backend reported no servable models; its previous lanes are kept until they expire"
            )
        else:
            st.last_error = None
        if found.lanes:  # an empty answer deletes nothing
            inv = ctx.inventory
            # A lane denied by an earlier auth failure, or stale after a 404, comes back now that
            # the backend confirms it; any other health (a breaker's) is the breaker's to change.
            lanes = [
                lane.replace(health=Health.HEALTHY)
                if (old := inv.get(lane.id)) is not None and old.health in (Health.DENIED, Health.STALE)
                else lane
                for lane in found.lanes
            ]
            inv.replace_backend(self.name, lanes)
        st.lanes = len(ctx.inventory.by_backend(self.name))

    # -- sharing (cluster mode) --------------------------------------------------------------

    def snapshot(self, replica: str) -> BackendSnapshot | None:
        """The backend as the last refresh here left it, made by ``replica`` unless adopted from
        another's; None before any refresh."""
        st = self.status
        if st.last_attempt is None:
            return None
        notes = self.provider.discovery_notes() if isinstance(self.provider, DiscoveryNotes) else {}
        status = {k: v for k, v in st.as_dict().items() if k not in ("lanes", "leader", "refreshed_by")}
        return BackendSnapshot(
            backend=self.name,
            scope=self.sharing_scope,
            replica=st.refreshed_by or replica,
            refreshed_at=st.last_attempt,
            lanes=self.ctx.inventory.by_backend(self.name),
            status=status,
            known=self.known,
            notes=notes,
        )

    def adopt(self, snapshot: BackendSnapshot) -> None:
        """Take up another replica's refresh of this backend as if it had been made here: its
        lanes (written first, then the orphans deleted; an empty list deletes nothing, as an
        empty answer does), its status, the models it knows and what its provider learnt.
        ``denied`` and ``stale`` come from the snapshot; a lane the snapshot does not hold so has
        them lifted here; any other health (a breaker's) is kept as this replica has it."""
        inv = self.ctx.inventory
        lanes = [
            lane.replace(health=Health.HEALTHY)
            if lane.health is None
            and (old := inv.get(lane.id)) is not None
            and old.health in DISCOVERY_HEALTH
            else lane
            for lane in snapshot.lanes
        ]
        if lanes:
            inv.replace_backend(self.name, lanes)
        fields = status_fields(BackendStatus, snapshot.status)
        for name in ("name", "family", "tier", "base_url", "interval", "lanes", "leader", "refreshed_by"):
            fields.pop(name, None)  # this replica's own: its declaration, its inventory, its view
        for name, value in fields.items():
            setattr(self.status, name, value)
        self.status.refreshed_by = snapshot.replica
        self.status.lanes = len(inv.by_backend(self.name))
        self.known = snapshot.known | frozenset(self.config.declared)
        if isinstance(self.provider, DiscoveryNotes):
            self.provider.take_notes(snapshot.notes)

    async def aclose(self) -> None:
        if self._running is not None and not self._running.done():
            self._running.cancel()
            await asyncio.wait((self._running,))
        await self.provider.aclose()
