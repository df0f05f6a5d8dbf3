"""The composition root: builds every component from one ``Settings`` and owns their lifetimes.

The API and the CLI get a ``Gateway``; nothing below it knows it exists.
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
from laneway.config.schema import BackendConfig, Settings, default_data_dir
from laneway.config.selectors import parse_routes, route_warnings, validate_routes
from laneway.inventory.cooldown import AuthCooldowns
from laneway.inventory.modelcache import ModelListCache
from laneway.inventory.reconcile import Reconciler
from laneway.inventory.refresher import RefreshContext
from laneway.inventory.store import Inventory
from laneway.pools import PoolRegistry
from laneway.providers.base import Provider
from laneway.providers.registry import build_provider
from laneway.routing.backends import AllBackends
from laneway.routing.breaker import Breakers
from laneway.routing.dispatch import Router
from laneway.routing.failover import FailoverLog
from laneway.routing.resolve import Resolver
from laneway.signals.store import Probe, Signals
from laneway.storage import Database, KeyValueStore, open_stores
from laneway.storage.usage_writer import UsageRecorder
from laneway.virtual import Fleet

log = logging.getLogger("laneway")


@dataclass
class GatewayOptions:
    key_reload_interval: float = 5.0
    # Run the reconciliation schedule in the background. Tests that drive cycles by hand turn it
    # off; on-demand refreshes (a request for an unknown model, POST /admin/refresh) still run.
    schedule: bool = True


@dataclass
class Gateway:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    options: GatewayOptions = field(default_factory=GatewayOptions)

    def __post_init__(self) -> None:
        self.inventory = Inventory()
        self.keys = KeyRing(open_access=self.settings.auth.open)
        self._config_keys, self._admin_keys, self._grants = config_key_hashes(
            self.settings.auth.keys, self.settings.source
        )
        self.db: Database | None = None
        self.runtime: KeyValueStore | None = None
        self.reconciler: Reconciler | None = None
        self.signals: Signals | None = None
        self.pools = PoolRegistry(self.clock)
        self.breakers = Breakers(self.clock, self.settings.routing.breaker, self.inventory)
        self.failovers = FailoverLog(self.settings.routing.failover_records)
        self.usage: UsageRecorder | None = None
        self.router: Router | None = None
        self.fleet: Fleet | None = None
        self.key_reloader: KeyReloader | None = None
        self.ready = False
        # Stopping: no new client requests, those in flight finish (laneway.api.drain).
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._shadowed: set[str] = set()  # in both the config and the database: warned about once
        self._names: frozenset[str] = frozenset()  # the declared backends, as of the last change

    @property
    def backends(self) -> dict[str, BackendConfig]:
        return self.reconciler.configs if self.reconciler else {}

    @property
    def providers(self) -> dict[str, Provider]:
        return self.reconciler.providers if self.reconciler else {}

    async def start(self) -> None:
        settings = self.settings
        log_storage(settings)
        self.db = await Database.open(settings.storage.resolved_database_url())
        self.usage = UsageRecorder(self.db.usage.add_many, self.clock)
        self.runtime, cache_store = open_stores(
            settings.storage.runtime_url, settings.storage.data_dir, self.clock
        )
        self.signals = Signals(cache_store, self.clock, settings.signals)
        await self.signals.load()
        self.fleet = Fleet(
            self.inventory,
            self.clock,
            settings,
            declared=lambda: self.reconciler.refreshers.keys() if self.reconciler else (),
            serves_declared=lambda model: self.reconciler is not None and self.reconciler.serves(model),
            pools=self.pools,
        )
        inv = settings.inventory
        ctx = RefreshContext(
            inventory=self.inventory,
            cooldowns=AuthCooldowns(self.runtime, self.clock, ttl=inv.auth_cooldown),
            cache=ModelListCache(cache_store, ttl=inv.model_cache_ttl),
            clock=self.clock,
            settings=inv,
        )
        self.reconciler = Reconciler(
            ctx,
            declared=self.declared_backends,
            build_provider=build_provider,
            on_change=self._rebuild_routes,
        )
        await self.reconciler.sync_declared()
        validate_routes(settings, extra_backends=frozenset(self.reconciler.refreshers))
        for warning in route_warnings(settings, frozenset(self.reconciler.refreshers)):
            log.warning(warning)
        self._rebuild_routes(frozenset(self.reconciler.refreshers))
        self.key_reloader = KeyReloader(
            self.db,
            self.keys,
            self.fleet.tokens,
            (self._config_keys, self._admin_keys, self._grants),
            self.clock,
            interval=self.options.key_reload_interval,
            on_reload=self.fleet.cut_off,
        )
        await self.reload_keys()
        await self.reconciler.cycle()
        self._tasks = [
            asyncio.create_task(self.key_reloader.run(), name="key-reload"),
            asyncio.create_task(self.usage.run(), name="usage"),
        ]
        if self.options.schedule:
            self._tasks.append(asyncio.create_task(self.reconciler.run(), name="reconcile"))
            self._tasks.append(asyncio.create_task(self.signals.run(self._probe_targets), name="signals"))
            self._tasks.append(asyncio.create_task(self.fleet.run(), name="fleet"))
        self.ready = True
        log.info("laneway ready: %d backends, %d lanes", len(self.backends), len(self.inventory))

    async def declared_backends(self) -> dict[str, BackendConfig]:
        """The declared state: the config file's backends, plus those declared in the database
        (the config file wins a name both declare)."""
        assert self.db is not None
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

    def _probe_targets(self) -> dict[str, tuple[str, Probe]]:
        """The backends whose signals come from probing: local ones (cloud ones: from traffic)."""
        assert self.reconciler is not None
        return {
            name: (refresher.provider.family, refresher.provider.probe)
            for name, refresher in self.reconciler.refreshers.items()
            # A backend without its key is never called, by probes neither (see Refresher).
            if refresher.config.effective_tier == "local" and not refresher.status.unset_key_env
        }

    def _rebuild_routes(self, names: frozenset[str]) -> None:
        """Selectors read ``backend/model`` against the declared backend names: re-parse them when
        the set of backends changes."""
        assert self.reconciler is not None
        assert self.fleet is not None
        resolver = Resolver(self.inventory, parse_routes(self.settings, names), names)
        for gone in self._names - names:
            self.pools.remove_backend(gone)
        self._names = names
        if self.router is None:
            assert self.signals is not None
            assert self.usage is not None
            routing = self.settings.routing
            self.router = Router(
                resolver,
                ChainMap(self.reconciler.providers, self.fleet.providers),
                backends=AllBackends(self.reconciler, self.fleet),
                signals=self.signals,
                pools=self.pools,
                breakers=self.breakers,
                failovers=self.failovers,
                usage=self.usage,
                settings=routing,
                clock=self.clock,
                seed=routing.seed if routing.seed is not None else random.SystemRandom().randrange(2**63),
            )
        else:
            self.router.resolver = resolver

    async def reload_keys(self) -> None:
        """Client keys and publisher tokens from the database (``laneway.auth.reload``); a revoked
        publisher token's sessions are cut off: their control streams close, their lanes go inactive."""
        assert self.key_reloader is not None
        await self.key_reloader.reload()

    async def aclose(self) -> None:
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.fleet is not None:
            await self.fleet.aclose()  # ends the publishers' control streams
        if self.usage is not None:
            await self.usage.aclose()  # the last batch, before the database goes
        if self.signals is not None:
            await self.signals.aclose()  # persists what the last requests taught
        if self.reconciler is not None:
            await self.reconciler.aclose()
        if self.runtime is not None:
            await self.runtime.aclose()
        if self.db is not None:
            await self.db.aclose()


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
