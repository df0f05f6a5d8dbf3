"""The publisher relay across replicas, on Redis: the shared records of publisher sessions
(``RedisSessions``, the ``SessionStore`` of ``laneway.virtual.shared``) and the messages of the
task relay between replicas (``BusPeers``, the ``Peers`` of ``laneway.virtual.peers``).

Keys, under the cluster's namespace:

    fleet/name/<publisher name>   "<version>:<JSON record>" (its sessions and rows), with a TTL
    fleet/session/<session id>    the publisher name of the session (found by id), same TTL
    fleet/version                 the counter every record's version comes from (only grows)

A record is written only by ``SAVE``, a Lua script that compares the version the writer read and
writes the record, a new version and its session index in one step: two replicas never both
change one publisher name from the same state (the loser reads again and retries). The TTL is
renewed at every write (every heartbeat of a live session): a record nobody writes lapses after
the publishers' heartbeat timeout and retention, as the sessions in it would be deleted anyway.

Every record written is announced on the bus (``fleet.sessions``) so the others mirror it at once;
a replica that missed some (the bus was away) reads them all when it listens again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from laneway.clock import Clock, within
from laneway.cluster.bus import Bus
from laneway.cluster.replicas import Replicas
from laneway.config.schema import Settings
from laneway.storage.errors import StorageError
from laneway.storage.redisstore import RedisBreaker, RedisStore
from laneway.virtual import Fleet
from laneway.virtual.errors import RelayUnavailable, UnknownTask
from laneway.virtual.peers import ABANDONED, CANCEL, LISTENING, TASK, UNDELIVERED
from laneway.virtual.shared import EMPTY, Record

log = logging.getLogger("laneway.cluster")

NAMES = "fleet/name/"
SESSIONS = "fleet/session/"
VERSION = "fleet/version"

ANNOUNCED = "fleet.sessions"  # payload: {"name", "version", "data"}
POST = "fleet.post"  # payload: {"ref", "reply_to", "post"}: a publisher's post, for its requester
ANSWER = "fleet.answer"  # payload: {"ref", "answer"}

SAVE = """
local current = redis.call('GET', KEYS[1])
local version = 0
if current then version = tonumber(string.match(current, '^(%d+):')) or 0 end
if version ~= tonumber(ARGV[1]) then return 0 end
local new = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], new .. ':' .. ARGV[2], 'PX', ARGV[3])
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[4], 'PX', ARGV[3]) end
return new
"""


class RedisSessions:
    """The records of publisher sessions in Redis (through ``RedisStore``: its timeouts, its
    breaker, ``StoreUnavailable``), announced on ``bus``; a record lapses ``ttl`` seconds after
    its last write."""

    def __init__(self, store: RedisStore, bus: Bus, *, ttl: float) -> None:
        self._store = store
        self._bus = bus
        self._ttl_ms = max(1, round(ttl * 1000))

    async def load(self, name: str) -> Record:
        return _record(await self._store.get(NAMES + name))

    async def load_all(self) -> dict[str, Record]:
        found = await self._store.scan(NAMES)
        return {key[len(NAMES) :]: _record(raw) for key, raw in found.items()}

    async def save(
        self, name: str, data: dict[str, Any], expected: int, session_ids: list[str]
    ) -> int | None:
        keys = [NAMES + name, VERSION, *(SESSIONS + session_id for session_id in session_ids)]
        version = await self._store.evaluate(SAVE, keys, [expected, orjson.dumps(data), self._ttl_ms, name])
        return int(version) or None

    async def name_of(self, session_id: str) -> str | None:
        raw = await self._store.get(SESSIONS + session_id)
        return raw.decode(errors="replace") if raw is not None else None

    async def announce(self, name: str, record: Record) -> None:
        await self._bus.publish(ANNOUNCED, {"name": name, "version": record.version, "data": record.data})


def _record(raw: bytes | None) -> Record:
    if raw is None:
        return Record(0, EMPTY)
    version, _, data = raw.partition(b":")
    return Record(int(version), orjson.loads(data))


Lost = Callable[[], None]


class BusPeers:
    """The other replicas, on the cluster's bus. What is told goes out in the order it was told
    (one sender, so a cancel never overtakes its task); a post handed to its requester waits for
    the answer at most ``timeout`` seconds of ``clock``. While ``breaker`` (the runtime store's)
    says Redis cannot be reached, what is told is lost at once instead of each message waiting
    out its own timeout behind the others."""

    def __init__(
        self,
        bus: Bus,
        replicas: Replicas,
        clock: Clock,
        *,
        timeout: float,
        breaker: RedisBreaker | None = None,
    ) -> None:
        self._bus = bus
        self._replicas = replicas
        self._clock = clock
        self._timeout = timeout
        self._breaker = breaker
        self._outbox: asyncio.Queue[tuple[str, str, dict[str, Any], Lost | None]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._asked: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._refs = 0

    @property
    def me(self) -> str:
        return self._replicas.id

    def tell(self, replica: str, topic: str, payload: dict[str, Any], *, lost: Lost | None = None) -> None:
        self._outbox.put_nowait((replica, topic, payload, lost))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send(), name="fleet-outbox")

    async def _send(self) -> None:
        while True:
            replica, topic, payload, lost = await self._outbox.get()
            away = self._breaker is not None and self._breaker.closed_for() > 0
            if (away or not await self._bus.send(replica, topic, payload)) and lost is not None:
                try:
                    lost()
                except Exception:  # the sender serves every message after this one too
                    log.exception("handling a message that could not be delivered failed")

    async def ask(self, replica: str, payload: dict[str, Any]) -> dict[str, Any]:
        self._refs += 1
        ref = self._refs
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asked[ref] = answer

        def lost() -> None:
            if not answer.done():
                answer.set_exception(
                    UnknownTask(
                        f"no task '{payload.get('task')}' in flight: the replica serving its request is gone"
                    )
                )

        self.tell(replica, POST, {"ref": ref, "reply_to": self.me, "post": payload}, lost=lost)
        try:
            return await within(self._clock, self._timeout, answer)
        except TimeoutError:
            raise RelayUnavailable(
                f"the replica serving task '{payload.get('task')}' did not answer within "
                f"{self._timeout:g}s; the task will be sent again"
            ) from None
        finally:
            self._asked.pop(ref, None)

    def answering(
        self, handle: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> Callable[[dict[str, Any]], Any]:
        """The bus handler of posts asked of this replica: ``handle`` answers each."""

        async def on_post(payload: dict[str, Any]) -> None:
            post, reply_to = payload.get("post"), payload.get("reply_to")
            if isinstance(post, dict) and isinstance(reply_to, str):
                self.tell(reply_to, ANSWER, {"ref": payload.get("ref"), "answer": handle(post)})

        return on_post

    async def on_answer(self, payload: dict[str, Any]) -> None:
        ref, answer = payload.get("ref"), payload.get("answer")
        waiting = self._asked.get(ref) if isinstance(ref, int) else None
        if waiting is not None and not waiting.done() and isinstance(answer, dict):
            waiting.set_result(answer)

    async def live(self) -> set[str] | None:
        try:
            return {replica.id for replica in await self._replicas.live()}
        except StorageError:
            return None

    async def aclose(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)


def join_cluster(
    fleet: Fleet, store: RedisStore, bus: Bus, replicas: Replicas, settings: Settings, clock: Clock
) -> None:
    """Make ``fleet`` one replica's part of the cluster's: its sessions mirrored from Redis, its
    tasks and posts relayed over ``bus``."""
    publishers = settings.publishers
    ttl = publishers.heartbeat_timeout + publishers.inactive_retention + publishers.sweep_interval
    peers = BusPeers(bus, replicas, clock, timeout=5 * settings.cluster.redis_timeout, breaker=store.breaker)
    mirror = fleet.join(RedisSessions(store, bus, ttl=ttl), peers)

    async def announced(payload: dict[str, Any]) -> None:
        name, version, data = payload.get("name"), payload.get("version"), payload.get("data")
        if isinstance(name, str) and isinstance(version, int) and isinstance(data, dict):
            await mirror.received(name, Record(version, data))

    bus.on(ANNOUNCED, announced)
    bus.on(TASK, fleet.inbox.task)
    bus.on(CANCEL, fleet.inbox.cancel)
    bus.on(UNDELIVERED, fleet.inbox.undelivered)
    bus.on(ABANDONED, fleet.inbox.abandoned)
    bus.on(LISTENING, fleet.inbox.peer_listening)
    bus.on(POST, peers.answering(fleet.inbox.post))
    bus.on(ANSWER, peers.on_answer)

    async def listening_again() -> None:
        # After the records (the tasks given back go where they say); and the others are told,
        # for what they parked while this replica could not hear.
        await fleet.inbox.listening()
        await bus.publish(LISTENING, {"replica": replicas.id})

    bus.on_listening(mirror.reload)
    bus.on_listening(listening_again)
