"""The composition root: builds every component from one ``Settings`` and owns their lifetimes.

The API and the CLI get a ``Gateway``; nothing below it knows it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from laneway.clock import Clock, SystemClock
from laneway.config.schema import BackendConfig, Settings
from laneway.inventory.discovery import Discovery
from laneway.inventory.store import Inventory
from laneway.keys import KeyRing, config_key_hashes
from laneway.providers.base import Provider
from laneway.providers.registry import build_provider
from laneway.routing.dispatch import Router
from laneway.routing.resolve import Resolver
from laneway.routing.selectors import parse_routes, validate_routes
from laneway.storage import Database

log = logging.getLogger("laneway")


@dataclass
class GatewayOptions:
    discovery_interval: float = 30.0
    discovery_deadline: float = 10.0
    key_reload_interval: float = 5.0


@dataclass
class Gateway:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    options: GatewayOptions = field(default_factory=GatewayOptions)

    def __post_init__(self) -> None:
        self.inventory = Inventory()
        self.keys = KeyRing(open_access=self.settings.auth.open)
        self._config_keys = config_key_hashes(self.settings.auth.keys, self.settings.source)
        self.backends: dict[str, BackendConfig] = {}
        self.providers: dict[str, Provider] = {}
        self.db: Database | None = None
        self.discovery: Discovery | None = None
        self.router: Router | None = None
        self.ready = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.db = await Database.open(self.settings.storage.resolved_database_url())
        self.backends = dict(self.settings.backends)
        for stored in await self.db.backends.list():
            if stored.name in self.backends:
                log.warning(
                    "backend '%s' is declared in the config and the database; the config wins", stored.name
                )
                continue
            self.backends[stored.name] = stored.config
        names = frozenset(self.backends)
        validate_routes(self.settings, extra_backends=names)
        self.providers = {name: build_provider(name, cfg) for name, cfg in self.backends.items()}
        self.discovery = Discovery(
            self.inventory,
            {name: (cfg, self.providers[name]) for name, cfg in self.backends.items()},
            self.clock,
            deadline=self.options.discovery_deadline,
        )
        resolver = Resolver(self.inventory, parse_routes(self.settings, names), names)
        self.router = Router(resolver, self.providers)
        await self.reload_keys()
        await self.discovery.refresh_all()
        self._tasks = [
            asyncio.create_task(self.discovery.run(self.options.discovery_interval), name="discovery"),
            asyncio.create_task(self._reload_keys_forever(), name="key-reload"),
        ]
        self.ready = True
        log.info("laneway ready: %d backends, %d lanes", len(self.backends), len(self.inventory))

    async def reload_keys(self) -> None:
        assert self.db is not None
        stored = await self.db.keys.active_hashes()
        self.keys.replace({**stored, **self._config_keys})

    async def _reload_keys_forever(self) -> None:
        # Keys created or revoked with the CLI reach a running server within one interval.
        while True:
            await self.clock.sleep(self.options.key_reload_interval)
            try:
                await self.reload_keys()
            except Exception:  # the database may be briefly away; keep the keys we have
                log.exception("could not reload API keys")

    async def aclose(self) -> None:
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(p.aclose() for p in self.providers.values()), return_exceptions=True)
        if self.db is not None:
            await self.db.aclose()
