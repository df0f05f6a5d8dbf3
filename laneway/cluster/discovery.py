"""Discovery in a cluster: one leader per backend, by a lease in Redis, and snapshots shared.

A replica leads a backend while it holds the backend's lease: a key whose value is its replica
id, taken with ``SET NX``-like semantics and a TTL of ``cluster.lease_ttl`` (Redis's own clock),
renewed every ``cluster.heartbeat`` and released by compare-and-set, all in Lua scripts run
atomically through ``RedisStore.evaluate``. One script call per heartbeat renews and takes every
lease of this replica. A leader killed with ``kill -9`` stops renewing: its leases lapse within
``lease_ttl`` and another replica takes them at its next heartbeat, so the leader's refresh is
late by at most ``lease_ttl + heartbeat`` (12 s with the defaults, under Ollama's 15 s interval).

Leadership is spread: each replica renews a candidacy (a sorted set, scored by when it lapses)
and takes free leases only up to its share, the backends divided by the live candidates (rounded
up); one above its share (a replica joined) gives the excess back for another to take. Leases
are otherwise sticky: a lease changes hands only when its holder dies, leaves or gives it back.

Leases and snapshots are per backend as declared (``sharing_scope``: its name and a fingerprint
of its declaration and credential), so replicas that declare a name differently never share it.

Snapshots (``laneway.inventory.sharing``) are kept one per backend, as a hash of the refresh's
start (``at``) and the snapshot, for as long as its lanes live; a script stores one only if it
is newer than what is there, so the stored snapshot never goes back in time whoever writes last.
Stored news goes out on the events bus (``discovery.snapshot``, the whole snapshot as payload),
so followers adopt it without a read of their own; on (re)subscribing they read them all.

Redis unreachable: this replica leads every backend (it refreshes them all, as a replica alone
does, and probes them) until a heartbeat reaches Redis again; then it takes its leases back, and
stores again the snapshots of those it leads (a restarted Redis lost them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from laneway.clock import Clock
from laneway.cluster.bus import Bus
from laneway.config.cluster import ClusterConfig
from laneway.inventory.sharing import BackendSnapshot, Discoverer
from laneway.storage.errors import StorageError
from laneway.storage.redisstore import RedisStore

log = logging.getLogger("laneway.cluster")

SNAPSHOT = "discovery.snapshot"  # event: another replica's refresh; payload: its BackendSnapshot
CANDIDATES = "discovery:candidates"
LEASE = "discovery:lease:"
SNAPSHOTS = "discovery:snapshot:"

# KEYS[1]: the candidates; KEYS[2..]: one lease per backend. ARGV: this replica, the TTL (ms).
# Renews this replica's candidacy and leases, gives back those above its share, takes free ones
# up to it; returns every backend's holder (nil: nobody).
CLAIM = """
local me, ttl = ARGV[1], tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, me)
redis.call('PEXPIRE', KEYS[1], ttl)
local share = math.ceil((#KEYS - 1) / redis.call('ZCARD', KEYS[1]))
local holders, mine = {}, {}
for i = 2, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  holders[i - 1] = holder
  if holder == me then mine[#mine + 1] = i end
end
while #mine > share do
  local i = table.remove(mine)
  redis.call('DEL', KEYS[i])
  holders[i - 1] = false
end
for _, i in ipairs(mine) do redis.call('PEXPIRE', KEYS[i], ttl) end
local held = #mine
for i = 2, #KEYS do
  if held >= share then break end
  if not holders[i - 1] then
    redis.call('SET', KEYS[i], me, 'PX', ttl)
    holders[i - 1] = me
    held = held + 1
  end
end
return holders
"""

# KEYS as CLAIM's; ARGV[1]: this replica. Its candidacy ends, and each lease it holds is freed.
LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 0
"""

# KEYS[1]: a backend's snapshot. ARGV: the snapshot, its refresh's start, the TTL (ms).
# 1 if stored; 0 if the one stored is as new or newer (then nothing changes).
SHARE = """
local at = redis.call('HGET', KEYS[1], 'at')
if at and tonumber(at) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'at', ARGV[2], 'snapshot', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: snapshots; each one's stored snapshot, or nil.
READ = """
local found = {}
for i = 1, #KEYS do found[i] = redis.call('HGET', KEYS[i], 'snapshot') end
return found
"""


class ClusterDiscovery:
    """``laneway.inventory.sharing.Sharing`` on Redis: ``run`` claims leases every heartbeat;
    ``share``/``read`` store and read snapshots; events from the others are adopted."""

    def __init__(
        self, store: RedisStore, bus: Bus, *, replica: str, clock: Clock, config: ClusterConfig
    ) -> None:
        self.replica = replica
        self._store = store
        self._bus = bus
        self._clock = clock
        self._config = config
        self._discoverer: Discoverer | None = None
        self._held: frozenset[str] = frozenset()  # the leases this replica held at the last claim
        self._leaders: dict[str, str] = {}  # backend -> its holder, as of the last claim
        self._alone = False  # the last claim could not reach Redis: lead everything
        self._unshared: str | None = None  # why the last share failed (said once per outage)

    def attach(self, discoverer: Discoverer) -> None:
        self._discoverer = discoverer
        self._bus.on(SNAPSHOT, self._told)
        self._bus.on_listening(self._catch_up)

    def leads(self, backend: str) -> bool:
        return self._alone or backend in self._held

    def leader(self, backend: str) -> str | None:
        return self.replica if self._alone else self._leaders.get(backend)

    # -- leases ------------------------------------------------------------------------------

    async def claim(self) -> None:
        """One heartbeat: renew this replica's leases and take its share of the free ones (or, if
        Redis cannot be reached, lead everything); tell the reconciler what changed."""
        discoverer = self._discoverer
        if discoverer is None:
            return
        scopes = discoverer.scopes()
        names = sorted(scopes)
        before, held_before = self._led(names), self._held
        try:
            holders = await self._store.evaluate(
                CLAIM,
                [CANDIDATES, *(LEASE + scopes[name] for name in names)],
                [self.replica, _ms(self._config.lease_ttl)],
            )
        except StorageError as exc:
            if not self._alone:
                log.warning(
                    "cannot reach the runtime store for discovery leases; refreshing every backend "
                    "here until it is back: %s",
                    exc.message,
                )
            self._alone, self._held, self._leaders = True, frozenset(), {}
        else:
            if self._alone:
                log.info("runtime store back: discovery leases taken again")
            self._alone = False
            self._leaders = {
                name: _text(holder) for name, holder in zip(names, holders, strict=False) if holder
            }
            self._held = frozenset(name for name, holder in self._leaders.items() if holder == self.replica)
        after = self._led(names)
        gained, lost = (after - before) | (self._held - held_before), before - after
        if gained or lost:
            if not self._alone:
                log.info(
                    "discovery leadership changed",
                    extra={"replica": self.replica, "leads": sorted(after), "gained": sorted(gained)},
                )
            discoverer.leadership_changed(gained, lost)

    def _led(self, names: Sequence[str]) -> frozenset[str]:
        return frozenset(names) if self._alone else self._held

    async def run(self) -> None:
        while True:
            try:
                await self.claim()
            except Exception:  # one bad heartbeat must not end leadership for good
                log.exception("discovery lease renewal failed")
            await self._clock.sleep(self._config.heartbeat)

    async def aclose(self) -> None:
        """Free this replica's leases at once (stopped, not killed): the others take over at their
        next heartbeat instead of after ``lease_ttl``."""
        if self._discoverer is None or self._alone:
            return
        leases = [LEASE + scope for scope in self._discoverer.scopes().values()]
        try:
            async with asyncio.timeout(2):
                await self._store.evaluate(LEAVE, [CANDIDATES, *leases], [self.replica])
        except (StorageError, TimeoutError):
            pass  # they lapse on their own
        self._held = frozenset()

    # -- snapshots ---------------------------------------------------------------------------

    async def share(self, snapshot: BackendSnapshot, *, ttl: float) -> None:
        payload = snapshot.to_payload()
        try:
            stored = await self._store.evaluate(
                SHARE,
                [SNAPSHOTS + snapshot.scope],
                [orjson.dumps(payload), repr(snapshot.refreshed_at), _ms(ttl)],
            )
        except StorageError as exc:
            if self._unshared is None:
                log.warning(
                    "could not share a refresh with the other replicas (they refresh it themselves "
                    "if it stays unshared): %s",
                    exc.message,
                    extra={"backend": snapshot.backend},
                )
            self._unshared = exc.message
            return
        self._unshared = None
        if stored:
            await self._bus.publish(SNAPSHOT, payload)

    async def read(self, backends: Sequence[str]) -> dict[str, BackendSnapshot] | None:
        scopes = self._discoverer.scopes() if self._discoverer is not None else {}
        backends = [name for name in backends if name in scopes]
        if not backends:
            return {}
        try:
            found = await self._store.evaluate(READ, [SNAPSHOTS + scopes[name] for name in backends], [])
        except StorageError as exc:
            log.warning("could not read the shared discovery snapshots: %s", exc.message)
            return None
        snapshots: dict[str, BackendSnapshot] = {}
        for name, raw in zip(backends, found, strict=False):
            snapshot = _decoded(raw) if raw else None
            if snapshot is not None and (snapshot.backend, snapshot.scope) == (name, scopes[name]):
                snapshots[name] = snapshot
        return snapshots

    async def _told(self, payload: dict[str, Any]) -> None:
        snapshot = BackendSnapshot.from_payload(payload)
        if snapshot is not None and self._discoverer is not None:
            self._discoverer.adopt(snapshot)

    async def _catch_up(self) -> None:
        """Listening again after a cut: the events missed meanwhile are in the stored snapshots."""
        if self._discoverer is None:
            return
        for snapshot in ((await self.read(list(self._discoverer.scopes()))) or {}).values():
            self._discoverer.adopt(snapshot)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _decoded(raw: object) -> BackendSnapshot | None:
    try:
        data = orjson.loads(raw) if isinstance(raw, bytes | str) else None
    except orjson.JSONDecodeError:
        return None
    return BackendSnapshot.from_payload(data) if isinstance(data, dict) else None
