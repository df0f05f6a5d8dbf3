"""The cluster mode's ``KeyValueStore``: Redis (or Valkey), shared by every replica.

TTLs are Redis's own (``SET ... PX``) and run on the server's clock, so every replica agrees on
when an entry expires; an injected ``Clock`` does not apply here. Keys live under a namespace
(``laneway:`` unless told otherwise) so several deployments, or tests, can share one server.

redis-py's exceptions are translated at one boundary (``_translated``) and never travel further.

Redis trouble must never hang the gateway: every call has a timeout (``timeout``: connecting and
each reply), and a breaker (``RedisBreaker``) stops trying for ``cooldown`` seconds after
``failures`` calls in a row could not reach Redis, so what waits on the store fails at once with
``StoreUnavailable`` rather than each waiting out its own timeout; the first call after the
cooldown tries again, and a success closes it.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from laneway.clock import Clock, SystemClock
from laneway.storage.errors import StorageError, StoreUnavailable

_SCAN_BATCH = 500  # keys per SCAN step and per MGET


class RedisBreaker:
    """Open after ``failures`` unreachable calls in a row, for ``cooldown`` seconds (monotonic, on
    the injected clock); then one call is let through to try."""

    def __init__(self, clock: Clock, *, failures: int = 3, cooldown: float = 2.0) -> None:
        self.clock = clock
        self.failures = failures
        self.cooldown = cooldown
        self._failed = 0
        self._open_until = 0.0

    def closed_for(self) -> float:
        """Seconds it stays open; 0 when a call may go."""
        return max(0.0, self._open_until - self.clock.monotonic())

    def failed(self) -> None:
        self._failed += 1
        if self._failed >= self.failures:
            self._open_until = self.clock.monotonic() + self.cooldown

    def succeeded(self) -> None:
        self._failed, self._open_until = 0, 0.0


class RedisStore:
    """A ``KeyValueStore`` on the Redis at ``url`` (``redis://`` or ``rediss://``).

    Connections come from a pool that ``aclose`` closes. A cancelled operation either reached
    Redis whole or not at all (each is one command); redis-py drops the connection it was on, so
    no half-read reply is left for the next caller. ``timeout`` bounds connecting and each reply.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "laneway:",
        timeout: float = 5.0,
        breaker: RedisBreaker | None = None,
    ) -> None:
        self._url = url
        self._where = redact_redis_url(url)
        self._namespace = namespace
        self.timeout = timeout
        self._client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        self.breaker = breaker or RedisBreaker(SystemClock())
        self._scripts: dict[str, Any] = {}  # Lua source -> redis-py's script (EVALSHA, then EVAL)

    @property
    def namespace(self) -> str:
        return self._namespace

    def sibling(self, *, timeout: float) -> RedisStore:
        """The same Redis and namespace, on connections of its own with another ``timeout``, and
        the same breaker (Redis is reachable or not for both). The request path's calls use a
        sibling with a short timeout; closing it is its owner's business."""
        return RedisStore(self._url, namespace=self._namespace, timeout=timeout, breaker=self.breaker)

    async def evaluate(
        self, script: str, keys: Sequence[str], args: Sequence[str | int | float | bytes]
    ) -> Any:
        """Run the Lua ``script`` on the server, atomically (nothing else runs meanwhile), with
        ``keys`` under the namespace as ``KEYS``. Sent once, then called by its digest. Failures
        are translated like every call's (``StoreUnavailable`` when Redis cannot be reached)."""
        runner = self._scripts.get(script)
        if runner is None:
            runner = self._scripts[script] = self._client.register_script(script)
        async with self._translated():
            return await runner(keys=[self._namespace + key for key in keys], args=list(args))

    async def get(self, key: str) -> bytes | None:
        async with self._translated():
            value = await self._client.get(self._namespace + key)
        return _as_bytes(value)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        # Redis counts whole milliseconds and refuses 0; a plain SET clears an earlier TTL, and an
        # infinite TTL is no TTL (as in the other stores).
        px = None if ttl is None or math.isinf(ttl) else max(1, round(ttl * 1000))
        async with self._translated():
            await self._client.set(self._namespace + key, bytes(value), px=px)

    async def delete(self, key: str) -> bool:
        async with self._translated():
            removed = await self._client.delete(self._namespace + key)
        return removed > 0

    async def scan(self, prefix: str) -> dict[str, bytes]:
        pattern = escape_glob(self._namespace + prefix) + "*"
        start = len(self._namespace.encode())
        found: dict[str, bytes] = {}
        async with self._translated():
            names = {name async for name in self._client.scan_iter(match=pattern, count=_SCAN_BATCH)}
            ordered = sorted(names)
            for i in range(0, len(ordered), _SCAN_BATCH):
                batch = ordered[i : i + _SCAN_BATCH]
                for name, value in zip(batch, await self._client.mget(batch), strict=True):
                    data = _as_bytes(value)
                    key = _decoded(name[start:])
                    if data is not None and key is not None:  # None: expired since SCAN, or not ours
                        found[key] = data
        return found

    async def aclose(self) -> None:
        try:  # not through the breaker: closing must happen even while it is open
            await self._client.aclose()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"cannot close the connections to Redis at {self._where}: {_reason(exc)}"
            ) from None

    def __repr__(self) -> str:
        return f"<RedisStore: {self._where} namespace={self._namespace!r}>"

    @asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        breaker = self.breaker
        wait = breaker.closed_for()
        if wait > 0:
            raise StoreUnavailable(
                f"cannot use Redis at {self._where}: it could not be reached several times in a row, "
                f"and is not tried again for {wait:.1f} s; check that Redis is running and reachable "
                "and the URL is right (storage.runtime_url)"
            )
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            breaker.failed()
            raise StoreUnavailable(
                f"cannot use Redis at {self._where}: {_reason(exc)}; check that Redis is running and "
                "reachable and the URL is right (storage.runtime_url)"
            ) from None
        except RedisError as exc:
            breaker.succeeded()  # it answered: reachable
            raise StorageError(f"Redis at {self._where} answered with an error: {_reason(exc)}") from None
        breaker.succeeded()


def escape_glob(text: str) -> str:
    """``text`` as a Redis glob pattern that matches only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def redact_redis_url(url: str) -> str:
    """The URL with its password (in the userinfo or as ``?password=``) replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = netloc.rpartition("@")[2]
        netloc = f"{user}:***@{host}"
    query = urllib.parse.urlencode(
        [
            (name, "***" if name == "password" else value)
            for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # The client is built without decode_responses, so replies are bytes; str would be a bug.
    return value.encode() if isinstance(value, str) else value


def _decoded(name: bytes) -> str | None:
    try:
        return name.decode()
    except UnicodeDecodeError:
        return None  # written by something else: no key of ours is invalid UTF-8


def _reason(exc: BaseException) -> str:
    words = str(exc).strip()
    return words.splitlines()[0] if words else type(exc).__name__
