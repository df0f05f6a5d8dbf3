"""Which replicas are alive: each one renews a record of itself in the runtime store, and a record
nobody renewed for ``cluster.lease_ttl`` is gone (the store's own TTL, so a replica killed with
``kill -9`` leaves the list on its own, without anyone noticing its death).

In the embedded default the store is this process's memory and the list is this replica alone;
on Redis (cluster mode) it is every replica that shares it. A record says what the replica holds
as of its last renewal: its publishers' control streams and the pool slots its requests use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass

import orjson

from laneway import __version__
from laneway.clock import Clock
from laneway.config.cluster import ClusterConfig
from laneway.storage.errors import StorageError
from laneway.storage.runtime import KeyValueStore

log = logging.getLogger("laneway.cluster")

PREFIX = "replicas/"


def new_replica_id() -> str:
    """<hostname>-<pid>-<4 hex>: readable in a list, and new at every start."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(frozen=True, slots=True)
class Holding:
    """What a replica holds right now (read at each renewal)."""

    control_streams: int = 0  # publishers' control streams open on it
    slots_leased: int = 0  # pool slots its requests are using


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    address: str
    version: str
    started: float  # wall clock
    heartbeat: float  # wall clock of its last renewal
    control_streams: int
    slots_leased: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Replicas:
    """This replica's record (renewed by ``run`` every ``cluster.heartbeat``, removed by
    ``aclose``) and the list of all live ones (``live``). ``holding`` says what it holds."""

    def __init__(
        self,
        store: KeyValueStore,
        clock: Clock,
        config: ClusterConfig,
        *,
        address: str,
        holding: Callable[[], Holding] = Holding,
    ) -> None:
        self.store = store
        self.clock = clock
        self.config = config
        self.id = config.replica_id or new_replica_id()
        self.address = config.advertise or address
        self.started = clock.now()
        self._holding = holding
        self._renewed = False  # the last renewal reached the store (to log a change once)
        self.unreachable: str | None = None  # why the last renewal did not reach the store

    def me(self) -> Replica:
        held = self._holding()
        return Replica(
            self.id,
            self.address,
            __version__,
            self.started,
            self.clock.now(),
            held.control_streams,
            held.slots_leased,
        )

    async def renew(self) -> None:
        """Write this replica's record with a fresh lease; a store that cannot be reached is said
        once in the log (the replica keeps serving: its record lapses, and returns with the store)."""
        record = orjson.dumps(self.me().as_dict())
        try:
            await self.store.set(PREFIX + self.id, record, ttl=self.config.lease_ttl)
        except StorageError as exc:
            if self._renewed:
                log.warning("replica record not renewed: %s", exc, extra={"replica": self.id})
            self._renewed, self.unreachable = False, exc.message
            return
        if not self._renewed:
            log.info("replica %s in the cluster at %s", self.id, self.address)
        self._renewed, self.unreachable = True, None

    async def run(self) -> None:
        while True:
            await self.renew()
            await self.clock.sleep(self.config.heartbeat)

    async def live(self) -> list[Replica]:
        """Every replica whose lease has not lapsed, by id."""
        found = await self.store.scan(PREFIX)
        replicas = []
        for key, data in sorted(found.items()):
            try:
                replicas.append(Replica(**orjson.loads(data)))
            except (orjson.JSONDecodeError, TypeError):
                log.warning("unreadable replica record %s", key)
        return replicas

    async def aclose(self) -> None:
        """Leave the cluster at once (a replica that is stopped, not killed)."""
        try:
            async with asyncio.timeout(2):
                await self.store.delete(PREFIX + self.id)
        except (StorageError, TimeoutError):
            pass  # its lease lapses on its own
