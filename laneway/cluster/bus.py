"""What one replica does that the others must know at once, pushed through Redis pub/sub.

An event is a topic and a small JSON payload, published on one channel under the cluster's
namespace with the sender's replica id; every other replica's ``run`` loop hands it to the
handlers of its topic (a replica never handles its own: it already did what it announces). In the
embedded default there is no one to tell: ``NoBus`` publishes nothing.

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


class Bus(Protocol):
    def on(self, topic: str, handler: Handler) -> None: ...

    async def publish(self, topic: str, payload: dict[str, Any]) -> None: ...

    async def run(self) -> None: ...

    async def aclose(self) -> None: ...


class NoBus:
    """One replica alone: nothing to tell anyone."""

    def on(self, topic: str, handler: Handler) -> None:
        pass

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        pass


class RedisBus:
    def __init__(self, url: str, *, namespace: str, replica: str, clock: Clock, timeout: float = 1.0) -> None:
        self._where = redact_redis_url(url)
        self._channel = namespace + "events"
        self._replica = replica
        self._clock = clock
        self._client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        # The subscriber blocks on its connection: no reply timeout there, only on connecting.
        self._listener = Redis.from_url(url, socket_connect_timeout=timeout)
        self._handlers: dict[str, list[Handler]] = {}

    def on(self, topic: str, handler: Handler) -> None:
        self._handlers.setdefault(topic, []).append(handler)

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Tell the other replicas; a Redis that cannot be reached is logged, not raised: they
        learn it from the shared state in their own time."""
        message = orjson.dumps({"topic": topic, "from": self._replica, "payload": payload})
        try:
            await self._client.publish(self._channel, message)
        except (RedisError, OSError) as exc:
            log.warning("could not tell the other replicas '%s' through %s: %s", topic, self._where, exc)

    async def run(self) -> None:
        backoff = 1.0
        while True:
            pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                log.info("listening for the other replicas' events on %s", self._where)
                backoff = 1.0
                async for message in pubsub.listen():
                    await self._handle(message.get("data"))
            except (RedisError, OSError) as exc:
                log.warning("lost the events channel on %s: %s; reconnecting", self._where, exc)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await self._clock.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _handle(self, data: object) -> None:
        try:
            event = orjson.loads(data) if isinstance(data, bytes | str) else None
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or event.get("from") == self._replica:
            return
        payload = event.get("payload")
        for handler in self._handlers.get(str(event.get("topic")), ()):
            try:
                await handler(payload if isinstance(payload, dict) else {})
            except Exception:  # one bad handler must not end the loop that serves the others
                log.exception("handling the event '%s' failed", event.get("topic"))

    async def aclose(self) -> None:
        for client in (self._client, self._listener):
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass
