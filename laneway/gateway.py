"""The composition root: builds every component from one ``Settings`` and owns their lifetimes.

``Gateway.open`` opens the stores, wires the components and starts them; the API and the CLI get
the open ``Gateway`` (every part of it there) and ``aclose`` it. Nothing below it knows it exists.
``laneway models`` reuses the inventory's side of the wiring (``build_reconciler``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path

from laneway.auth.keys import KeyRing, config_key_hashes
from laneway.auth.reload import KeyReloader
from laneway.clock import Clock, SystemClock
from laneway.cluster.bus import Bus, RedisBus
from laneway.cluster.credentials import CredentialWatch
from laneway.cluster.fleet import join_cluster
from laneway.cluster.replicas import Holding, Replicas
from laneway.cluster.sharing import ClusterSharing
from laneway.cluster.wiring import build_pools, open_bus, open_discovery
from laneway.config.schema import BackendConfig, Settings, default_data_dir
from laneway.config.selectors import parse_routes, route_warnings, validate_routes
from laneway.failovers import FailoverRecord
from laneway.inventory.cooldown import AuthCooldowns
from laneway.inventory.modelcache import ModelListCache
from laneway.inventory.reconcile import Declared, Reconciler
from laneway.inventory.refresher import RefreshContext
from laneway.inventory.sharing import Sharing
from laneway.inventory.store import Inventory
from laneway.pools import PoolRegistry
from laneway.pools.shared import SharedPool, SlotKeeper
from laneway.providers.registry import build_provider
from laneway.routing.backends import AllBackends
from laneway.routing.breaker import Breakers
from laneway.routing.dispatch import Router
from laneway.routing.failover import FailoverLog
from laneway.routing.resolve import Resolver
from laneway.signals.store import Probe, Signals
from laneway.storage import Database, KeyValueStore, RedisStore, open_stores
from laneway.storage.batch_writer import BatchWriter
from laneway.storage.errors import StorageError
from laneway.storage.failovers_repo import FailoverStore
from laneway.storage.responses_repo import ResponseStore
from laneway.storage.urls import is_sqlite
from laneway.storage.usage_writer import UsageRecorder
from laneway.virtual import Fleet

log = logging.getLogger("laneway")


@dataclass
class GatewayOptions:
    key_reload_interval: float | None = None  # None: the config's auth.reload_interval
    # Run the reconciliation schedule in the background. Tests that drive cycles by hand turn it
    # off; on-demand refreshes (a request for an unknown model, POST /admin/refresh) still run.
    schedule: bool = True


class DeclaredBackends:
    """The declared state: the config file's backends, plus those declared in the database (the
    config file wins a name both declare, and says so once)."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._shadowed: set[str] = set()  # in both the config and the database: warned about once

    async def __call__(self) -> dict[str, BackendConfig]:
        declared = dict(self.settings.backends)
        for stored in await self.db.backends.list():
            if stored.name in declared:
                if stored.name not in self._shadowed:
                    self._shadowed.add(stored.name)
                    log.warning(
                        "backend '%s' is declared in the config and the database; the config wins",
                        stored.name,
                    )
                continue
            declared[stored.name] = stored.config
        return declared


def build_reconciler(
    settings: Settings,
    *,
    inventory: Inventory,
    runtime: KeyValueStore,
    cache: KeyValueStore,
    clock: Clock,
    declared: Declared,
    sharing: Sharing | None = None,
) -> Reconciler:
    """The inventory's side of the wiring: refreshers of the ``declared`` backends writing to
    ``inventory``, cooldowns in ``runtime``, model lists cached in ``cache``. The gateway's, and
    ``laneway models``' (one cycle, in memory)."""
    inv = settings.inventory
    ctx = RefreshContext(
        inventory=inventory,
        cooldowns=AuthCooldowns(runtime, clock, ttl=inv.auth_cooldown),
        cache=ModelListCache(cache, ttl=inv.model_cache_ttl),
        clock=clock,
        settings=inv,
    )
    return Reconciler(ctx, declared=declared, build_provider=build_provider, sharing=sharing)


@dataclass(eq=False, kw_only=True)
class Gateway:
    """Every component of one running laneway, built and started by ``Gateway.open`` (nothing is
    missing after it), stopped by ``aclose``."""

    settings: Settings
    clock: Clock
    options: GatewayOptions
    db: Database
    runtime: KeyValueStore
    inventory: Inventory
    keys: KeyRing
    signals: Signals
    usage: UsageRecorder
    pools: PoolRegistry
    breakers: Breakers
    failovers: FailoverLog  # this replica's newest, in memory: the answer when the database is away
    failover_store: FailoverStore  # every replica's, in the database (routing.failover_retention)
    failover_writer: BatchWriter[FailoverRecord]  # this replica's, to the database off the request path
    reconciler: Reconciler
    fleet: Fleet
    router: Router
    key_reloader: KeyReloader
    responses: ResponseStore  # the Responses API's stored responses, on the gateway's clock
    replicas: Replicas  # this replica's record in the runtime store, and the live ones
    bus: Bus  # what this replica tells the others at once (cluster.bus); NoBus when alone
    slots: SlotKeeper | None  # cluster mode: renews the leases of the pools' slots held here
    hot: RedisStore | None  # cluster mode: Redis for the request path (cluster.redis_request_timeout)
    # Signals, breakers and stale lanes told to and taken from the other replicas; None alone.
    sharing: ClusterSharing | None = None
    ready: bool = False  # started, and not closing
    draining: bool = False  # stopping: no new client requests, those in flight finish (api.drain)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _names: frozenset[str] = frozenset()  # the declared backends, as of the last change
    _closed: bool = False

    @classmethod
    async def open(
        cls, settings: Settings, *, clock: Clock | None = None, options: GatewayOptions | None = None
    ) -> Gateway:
        """Open the stores, build every component and start them: the declared backends are read
        and refreshed once, keys loaded, the background loops running. A failure closes what was
        opened and raises."""
        clock = clock or SystemClock()
        log_storage(settings)
        db = await Database.open(settings.storage.resolved_database_url())
        try:
            runtime, cache = open_stores(
                settings.storage.runtime_url,
                settings.storage.data_dir,
                clock,
                namespace=settings.cluster.namespace,
                timeout=settings.cluster.redis_timeout,
            )
        except BaseException:
            await db.aclose()
            raise
        gateway = cls._assemble(settings, clock, options or GatewayOptions(), db, runtime, cache)
        try:
            await gateway._start()
        except BaseException:
            await gateway.aclose()
            raise
        return gateway

    @classmethod
    def _assemble(
        cls,
        settings: Settings,
        clock: Clock,
        options: GatewayOptions,
        db: Database,
        runtime: KeyValueStore,
        cache: KeyValueStore,
    ) -> Gateway:
        """Build the components on the opened stores (no I/O)."""
        inventory = Inventory()
        keys = KeyRing(open_access=settings.auth.open)
        replicas = Replicas(
            runtime,
            clock,
            settings.cluster,
            address=f"http://{settings.server.host}:{settings.server.port}",
            holding=lambda: holding(pools, fleet),  # read at each renewal, once all is built
        )
        bus = open_bus(settings, replicas.id, clock)
        hot = (
            runtime.sibling(timeout=settings.cluster.redis_request_timeout)
            if isinstance(runtime, RedisStore)
            else None
        )
        pools, keeper = build_pools(settings, clock, hot, bus, replicas.id)
        signals = Signals(cache, clock, settings.signals)
        usage = UsageRecorder(db.usage.add_many, clock)
        reconciler = build_reconciler(
            settings,
            inventory=inventory,
            runtime=runtime,
            cache=cache,
            clock=clock,
            declared=DeclaredBackends(settings, db),
            sharing=open_discovery(settings, runtime, bus, replicas.id, clock),
        )
        fleet = Fleet(
            inventory,
            clock,
            settings,
            declared=reconciler.refreshers.keys,
            serves_declared=reconciler.serves,
            pools=pools,
        )
        sharing = None
        if hot is not None:  # cluster mode; a half-open trial is claimed on the request path
            sharing = ClusterSharing(
                hot, bus, replica=replicas.id, clock=clock, signals=signals, inventory=inventory
            )
        routing = settings.routing
        breakers = Breakers(clock, routing.breaker, inventory, sharing.breakers if sharing else None)
        failover_store = FailoverStore(db.failovers, clock, retention=routing.failover_retention)
        failover_writer = BatchWriter(failover_store.write, clock, name="failovers")
        failovers = FailoverLog(routing.failover_records, replica=replicas.id, sink=failover_writer)
        router = Router(
            Resolver(inventory, {}, frozenset()),  # the routes are parsed once backends are known
            ChainMap(reconciler.providers, fleet.providers),
            backends=AllBackends(reconciler, fleet),
            signals=signals,
            pools=pools,
            breakers=breakers,
            failovers=failovers,
            usage=usage,
            settings=routing,
            clock=clock,
            seed=routing.seed if routing.seed is not None else random.SystemRandom().randrange(2**63),
            replica=replicas.id,
        )
        key_reloader = KeyReloader(
            db,
            keys,
            fleet.tokens,
            config_key_hashes(settings.auth.keys, settings.source),
            clock,
            interval=options.key_reload_interval or settings.auth.reload_interval,
            on_reload=fleet.cut_off,
        )
        if isinstance(bus, RedisBus) and isinstance(runtime, RedisStore):  # a cluster: publishers' too
            join_cluster(fleet, runtime, bus, replicas, settings, clock)
        return cls(
            settings=settings,
            clock=clock,
            options=options,
            db=db,
            runtime=runtime,
            inventory=inventory,
            keys=keys,
            signals=signals,
            usage=usage,
            pools=pools,
            breakers=breakers,
            failovers=failovers,
            failover_store=failover_store,
            failover_writer=failover_writer,
            reconciler=reconciler,
            fleet=fleet,
            router=router,
            key_reloader=key_reloader,
            responses=ResponseStore(db.responses, clock, retention=settings.responses.retention),
            replicas=replicas,
            bus=bus,
            slots=keeper,
            hot=hot,
            sharing=sharing,
        )

    async def _start(self) -> None:
        await self.signals.load()
        reconciler = self.reconciler
        reconciler.on_change = self._rebuild_routes
        await reconciler.sync_declared()
        names = frozenset(reconciler.refreshers)
        validate_routes(self.settings, extra_backends=names)
        for warning in route_warnings(self.settings, names):
            log.warning(warning)
        self._rebuild_routes(names)
        await self.reload_keys()
        if reconciler.sharing is not None:  # the leases first: a backend led here is due as led
            await reconciler.sharing.claim()
        await reconciler.warm_up()  # alone: a refresh of every backend; joining: the others' snapshots
        await self.replicas.renew()
        if self.slots is not None:
            self.bus.on(SLOT_GRANTED, self._slot_granted)
            self.bus.on(SLOT_WANTED, self._slot_wanted)
            self.bus.on_listening(self.slots.sync_all)  # grants told while it did not listen
            self._tasks.append(asyncio.create_task(self.slots.run(), name="slots"))
        self.bus.on(COOLDOWN_LIFTED, self._refresh_told)
        self.bus.on(COOLDOWN_BEGAN, self._refresh_told)
        reconciler.on_refused = self._cooldown_began
        if self.sharing is not None:
            self.sharing.start(self.breakers)
            reconciler.on_stale = self.sharing.lane_stale
        self._tasks += [
            asyncio.create_task(self.key_reloader.run(), name="key-reload"),
            asyncio.create_task(self.usage.run(), name="usage"),
            asyncio.create_task(self.bus.run(), name="bus"),
            asyncio.create_task(self.failover_writer.run(), name="failovers"),
        ]
        if self.options.schedule:
            self._tasks.append(asyncio.create_task(reconciler.run(), name="reconcile"))
            self._tasks.append(asyncio.create_task(self.signals.run(self._probe_targets), name="signals"))
            self._tasks.append(asyncio.create_task(self.fleet.run(), name="fleet"))
            self._tasks.append(asyncio.create_task(self.replicas.run(), name="replica"))
            if reconciler.sharing is not None:
                self._tasks.append(asyncio.create_task(reconciler.sharing.run(), name="discovery-leases"))
            database_url = self.settings.storage.resolved_database_url()
            if not is_sqlite(database_url):
                watch = CredentialWatch(database_url, self.reload_keys, self.clock)
                self._tasks.append(asyncio.create_task(watch.run(), name="credentials"))
        self.ready = True
        log.info("laneway ready: %d backends, %d lanes", len(reconciler.refreshers), len(self.inventory))

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _probe_targets(self) -> dict[str, tuple[str, Probe]]:
        """The backends whose signals come from probing: local ones (cloud ones: from traffic),
        and in a cluster only those whose discovery this replica leads (one prober per backend)."""
        sharing = self.reconciler.sharing
        return {
            name: (refresher.provider.family, refresher.provider.probe)
            for name, refresher in self.reconciler.refreshers.items()
            # A backend without its key is never called, by probes neither (see Refresher).
            if refresher.config.effective_tier == "local"
            and not refresher.status.unset_key_env
            and (sharing is None or sharing.leads(name))
        }

    def _rebuild_routes(self, names: frozenset[str]) -> None:
        """Selectors read ``backend/model`` against the declared backend names: re-parse them when
        the set of backends changes."""
        self.router.resolver = Resolver(self.inventory, parse_routes(self.settings, names), names)
        for gone in self._names - names:
            self.pools.remove_backend(gone)
        self._names = names

    async def lift_cooldown(self, backend: str) -> bool:
        """Lift a backend's auth cooldown (its key was fixed): in the shared store, here at once
        (a refresh of it), and on every other replica at once (``COOLDOWN_LIFTED``). False if it
        had none."""
        refresher = self.reconciler.refreshers[backend]
        lifted = await self.reconciler.ctx.cooldowns.lift(refresher.credential)
        if lifted:
            await self.reconciler.cycle([backend])
            await self.bus.publish(COOLDOWN_LIFTED, {"backend": backend})
        return lifted

    def pool_every_lane(self) -> None:
        """Make the pool of every lane's backend (or lane) now, not at its first request: in
        cluster mode a pool's count is the cluster's, and an operator asking one replica sees it
        whether or not that replica sent a request through it yet. No I/O."""
        backends = self.router.backends
        for lane in self.inventory.lanes():
            config = backends.config(lane.backend)
            if config is not None:
                self.pools.pool_for(lane.backend, lane.id, config)

    async def _slot_granted(self, payload: dict[str, object]) -> None:
        """The cluster's count handed a slot to a request queued here (``pools.shared``)."""
        pool = self.pools.named(str(payload.get("pool")))
        if isinstance(pool, SharedPool):
            pool.granted(str(payload.get("ticket")))

    async def _slot_wanted(self, payload: dict[str, object]) -> None:
        """Someone queued for a pool: the spare leases kept here go back to the queue."""
        pool = self.pools.named(str(payload.get("pool")))
        if isinstance(pool, SharedPool):
            pool.wanted(str(payload.get("replica")))

    async def _cooldown_began(self, backend: str) -> None:
        """A call here was refused for its credentials, and the cooldown is in the shared store:
        the other replicas take it up now, without a refused call of their own."""
        await self.bus.publish(COOLDOWN_BEGAN, {"backend": backend})

    async def _refresh_told(self, payload: dict[str, object]) -> None:
        """Another replica began or lifted a backend's cooldown (it is in the shared store): a
        refresh of the backend now takes it up (lanes denied, or back), not at its next interval."""
        backend = payload.get("backend")
        if isinstance(backend, str) and backend in self.reconciler.refreshers:
            await self.reconciler.cycle([backend])

    async def reload_keys(self) -> None:
        """Client keys and publisher tokens from the database (``laneway.auth.reload``); a revoked
        publisher token's sessions are cut off: their control streams close, their lanes go inactive."""
        await self.key_reloader.reload()

    async def aclose(self) -> None:
        """Stop the background loops, then close the components in the order their work needs:
        publishers, the last usage batch and signals before the stores they go to. Idempotent."""
        if self._closed:
            return
        self._closed, self.ready = True, False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.fleet.aclose()  # ends the publishers' control streams
        await self.pools.aclose()  # slots given back now, rather than lapse with their leases
        await self.usage.aclose()  # the last batches, before the database goes
        await self.failover_writer.aclose()
        await self.signals.aclose()  # persists what the last requests taught
        if self.reconciler.sharing is not None:  # the others take over its backends at once
            await self.reconciler.sharing.aclose()
        await self.reconciler.aclose()
        await self.replicas.aclose()  # out of the cluster's list at once
        if self.sharing is not None:
            await self.sharing.aclose()
        await self.bus.aclose()
        if self.hot is not None:
            with contextlib.suppress(StorageError):
                await self.hot.aclose()
        await self.runtime.aclose()
        await self.db.aclose()


COOLDOWN_LIFTED = "cooldown.lifted"  # payload: {"backend": name}
SLOT_GRANTED = "slot.granted"  # payload: {"pool": name, "ticket": id}; sent by cluster.slots' scripts
SLOT_WANTED = "slot.wanted"  # payload: {"pool": name}; the same, to all: a pool's queue began
COOLDOWN_BEGAN = "cooldown.began"  # payload: {"backend": name}


def holding(pools: PoolRegistry, fleet: Fleet) -> Holding:
    """What this replica holds, for its record: open control streams, slots in use."""
    here = sum(s.active if s.active_here is None else s.active_here for s in pools.statistics())
    return Holding(fleet.control_streams(), here)


def log_storage(settings: Settings) -> None:
    """Say where this instance keeps its state, so two instances are never unknowingly sharing
    it; and point at a database an earlier laneway kept in the shared folder, which an instance
    with a derived data_dir no longer opens."""
    storage = settings.storage
    origin = (
        "derived from the config file; set storage.data_dir to choose"
        if storage.data_dir_derived
        else ("storage.data_dir")
    )
    log.info("data_dir %s (%s)", storage.data_dir, origin)
    legacy = Path(default_data_dir()) / "laneway.db"
    if storage.data_dir_derived and storage.database_url is None and legacy.exists():
        log.warning(
            "a database of an earlier laneway is at %s, but this instance keeps its state in %s; "
            "set storage.data_dir: %s to keep using it",
            legacy,
            storage.data_dir,
            legacy.parent,
        )
