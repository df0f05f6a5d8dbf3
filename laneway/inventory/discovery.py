"""Discovery: a backend's lanes, computed from what its upstream reports.

Declared models constrain a backend unless it auto-discovers; allow/deny lists filter both;
a model that is declared but missing upstream is reported, not silently dropped. The full
scheduled reconciliation (intervals, auth cooldown, expiry, model-list cache) builds on this.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from laneway.clock import Clock
from laneway.config.schema import BackendConfig
from laneway.errors import UpstreamError
from laneway.inventory.lanes import Lane
from laneway.inventory.store import Inventory
from laneway.providers.base import ModelInfo, Provider

log = logging.getLogger("laneway.inventory")


def model_allowed(config: BackendConfig, model: str) -> bool:
    if config.deny and any(fnmatchcase(model, pat) for pat in config.deny):
        return False
    return not config.allow or any(fnmatchcase(model, pat) for pat in config.allow)


def lanes_for(
    name: str, config: BackendConfig, models: list[ModelInfo], now: float
) -> tuple[list[Lane], list[str]]:
    """(lanes, missing declared models) for one backend."""
    observed = {m.id: m for m in models}
    if config.discovers:
        chosen = [m for m in models if model_allowed(config, m.id)]
        missing = [m for m in config.models if m not in observed]
    else:
        chosen = [observed[m] for m in config.models if m in observed and model_allowed(config, m)]
        missing = [m for m in config.models if m not in observed]
    lanes = [
        Lane(
            tier=config.effective_tier,
            family=config.provider,
            backend=name,
            type=lane_type,
            model=info.id,
            capabilities=info.capabilities,
            context_length=info.context_length,
            weight=config.weight,
            observed_at=now,
        )
        for info in chosen
        for lane_type in sorted(info.types)
    ]
    return lanes, missing


@dataclass
class BackendState:
    """What the last discovery of one backend found, for /readyz and the CLI."""

    last_refresh: float | None = None
    last_error: str | None = None
    missing_models: list[str] = field(default_factory=list)
    lanes: int = 0


class Discovery:
    """Runs discovery for every backend concurrently, each bounded by ``deadline`` seconds, so
    one dead backend never delays the others."""

    def __init__(
        self,
        inventory: Inventory,
        backends: dict[str, tuple[BackendConfig, Provider]],
        clock: Clock,
        *,
        deadline: float = 10.0,
    ) -> None:
        self.inventory = inventory
        self.backends = backends
        self.clock = clock
        self.deadline = deadline
        self.state: dict[str, BackendState] = {name: BackendState() for name in backends}

    async def refresh_backend(self, name: str) -> None:
        config, provider = self.backends[name]
        state = self.state.setdefault(name, BackendState())
        try:
            async with asyncio.timeout(self.deadline):
                models = await provider.list_models()
        except (UpstreamError, TimeoutError) as exc:
            state.last_error = str(exc) or f"discovery timed out after {self.deadline:g}s"
            log.warning("discovery failed", extra={"backend": name, "error": state.last_error})
            return  # a failed refresh deletes nothing
        lanes, missing = lanes_for(name, config, models, self.clock.now())
        state.last_refresh = self.clock.now()
        state.missing_models = missing
        if config.models and not config.discovers and len(missing) == len(config.models):
            state.last_error = f"none of the declared models exists upstream: {', '.join(missing)}"
        else:
            state.last_error = None
        if lanes:  # an empty answer deletes nothing either
            self.inventory.replace_backend(name, lanes)
        state.lanes = len(self.inventory.by_backend(name))

    async def refresh_all(self) -> None:
        await asyncio.gather(*(self.refresh_backend(name) for name in self.backends))

    async def run(self, interval: float) -> None:
        while True:
            await self.clock.sleep(interval)
            await self.refresh_all()
