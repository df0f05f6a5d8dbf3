"""What one replica does that the others must know at once, pushed through Redis pub/sub.

An event is a topic and a small JSON payload, published on one channel under the cluster's
namespace with the sender's replica id; every other replica's ``run`` loop hands it to the
handlers of its topic (a replica never handles its own: it already did what it announces). In the
embedded default there is no one to tell: ``NoBus`` publishes nothing.

A message for one replica only (``send``: a pool slot granted to one of its queued requests, a
task for the publisher whose control stream it holds, a chunk for the request it serves) goes on
that replica's own channel, ``<namespace>events:<replica id>``; Lua scripts that decide who gets
something publish there directly, in the same shape (``message``). A message a replica sends to
itself is handed to its handlers at once, without Redis. The messages of one sender on one channel
arrive in the order they were sent.

Pub/sub delivers to whoever is subscribed at that moment and keeps nothing: a replica that was
away misses what was said meanwhile. Each topic's handler must therefore only speed up what the
replica would learn anyway from the shared state (the runtime store, the database), never be the
only way it learns it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from laneway.clock import Clock
from laneway.storage.redisstore import redact_redis_url

log = logging.getLogger("laneway.cluster")

Handler = Callable[[dict[str, Any]], Awaitable[None]]
MAX_BACKOFF = 30.0


def message(topic: str, sender: str, payload: dict[str, Any]) -> bytes:
    """An event as it travels on a channel."""
    return orjson.dumps({"topic": topic, "from": sender, "payload": payload})


class Bus(Protocol):
    def on(self, topic: str, handler: Handler) -> None: ...

    def on_listening(self, callback: Callable[[], Awaitable[None]]) -> None:
        """``callback`` runs each time the bus (re)starts listening: what was sent meanwhile was
        missed, and the callback catches up from the shared state."""

    async def publish(self, topic: str, payload: dict[str, Any]) -> None: ...

    async def send(self, replica: str, topic: str, payload: dict[str, Any]) -> bool:
        """Tell one replica; False if it could not be told (no such replica listens, or Redis is
        unreachable: logged)."""

    async def run(self) -> None: ...

    async def aclose(self) -> None: ...


class NoBus:
    """One replica alone: nothing to tell anyone."""

    def on(self, topic: str, handler: Handler) -> None:
        pass

    def on_listening(self, callback: Callable[[], Awaitable[None]]) -> None:
        pass

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        pass

    async def send(self, replica: str, topic: str, payload: dict[str, Any]) -> bool:
        return False

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        pass


class RedisBus:
    def __init__(self, url: str, *, namespace: str, replica: str, clock: Clock, timeout: float = 1.0) -> None:
        self._where = redact_redis_url(url)
        self._namespace = namespace
        self._channel = namespace + "events"
        self._direct = self.direct_channel(replica)
        self._replica = replica
        self._clock = clock
        self._client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        # The subscriber blocks on its connection: no reply timeout there, only on connecting.
        self._listener = Redis.from_url(url, socket_connect_timeout=timeout)
        self._handlers: dict[str, list[Handler]] = {}
        self._listening: list[Callable[[], Awaitable[None]]] = []

    @property
    def channel(self) -> str:
        """The channel every replica hears (``publish``)."""
        return self._channel

    def direct_channel(self, replica: str) -> str:
        """The channel of one replica's own messages (``send``)."""
        return f"{self._namespace}events:{replica}"

    def on(self, topic: str, handler: Handler) -> None:
        self._handlers.setdefault(topic, []).append(handler)

    def on_listening(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._listening.append(callback)

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Tell the other replicas; a Redis that cannot be reached is logged, not raised: they
        learn it from the shared state in their own time."""
        try:
            await self._client.publish(self._channel, message(topic, self._replica, payload))
        except (RedisError, OSError) as exc:
            log.warning("could not tell the other replicas '%s' through %s: %s", topic, self._where, exc)

    async def send(self, replica: str, topic: str, payload: dict[str, Any]) -> bool:
        if replica == self._replica:
            await self._dispatch(topic, payload)
            return True
        try:
            heard = await self._client.publish(
                self.direct_channel(replica), message(topic, self._replica, payload)
            )
        except (RedisError, OSError) as exc:
            log.warning("could not tell replica %s '%s' through %s: %s", replica, topic, self._where, exc)
            return False
        return bool(heard)

    async def run(self) -> None:
        backoff = 1.0
        while True:
            pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel, self._direct)
                log.info("listening for the other replicas' events on %s", self._where)
                backoff = 1.0
                for callback in self._listening:
                    await self._safely(callback(), "catching up after (re)connecting")
                async for received in pubsub.listen():
                    await self._handle(received.get("data"), direct=_named(received) == self._direct)
            except (RedisError, OSError) as exc:
                log.warning("lost the events channel on %s: %s; reconnecting", self._where, exc)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            await self._clock.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _handle(self, data: object, *, direct: bool = False) -> None:
        try:
            event = orjson.loads(data) if isinstance(data, bytes | str) else None
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or (event.get("from") == self._replica and not direct):
            return
        payload = event.get("payload")
        await self._dispatch(str(event.get("topic")), payload if isinstance(payload, dict) else {})

    async def _dispatch(self, topic: str, payload: dict[str, Any]) -> None:
        for handler in self._handlers.get(topic, ()):
            await self._safely(handler(payload), f"handling the event '{topic}'")

    @staticmethod
    async def _safely(work: Awaitable[None], what: str) -> None:
        try:
            await work
        except Exception:  # one bad handler must not end the loop that serves the others
            log.exception("%s failed", what)

    async def aclose(self) -> None:
        for client in (self._client, self._listener):
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass


def _named(received: dict[str, Any]) -> str:
    """The channel a message came on (redis-py gives bytes)."""
    channel = received.get("channel")
    return channel.decode(errors="replace") if isinstance(channel, bytes) else str(channel)
