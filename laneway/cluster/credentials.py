"""Keys and publisher tokens changed anywhere reach every replica at once: on PostgreSQL, every
write of a key or a token notifies the channel ``laneway_credentials`` in its own transaction
(``storage.repos``), and each replica listens on it and reloads its keys when told, so a revoked
key is refused everywhere as soon as the revocation commits, not at the next poll. The poll
(``auth.reload_interval``) stays as the backstop, and a listener that lost its connection reloads
once it is back, for anything it missed while away. SQLite (the embedded default, one replica)
has no notifications; its gateway polls as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from laneway.clock import Clock
from laneway.errors import LanewayError
from laneway.storage.repos import CREDENTIALS_CHANNEL
from laneway.storage.urls import redact_url

log = logging.getLogger("laneway.cluster")

CONNECT_TIMEOUT = 5.0
MAX_BACKOFF = 30.0


def plain_dsn(database_url: str) -> str:
    """A ``postgresql+asyncpg://`` (or plain) URL as asyncpg takes it."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class CredentialWatch:
    """Listens for credential changes on the database at ``database_url`` and calls ``reload``
    (the gateway's key reload) for each burst of them; reconnects with backoff when the
    connection is lost, on the injected ``clock``."""

    def __init__(self, database_url: str, reload: Callable[[], Awaitable[None]], clock: Clock) -> None:
        self._dsn = plain_dsn(database_url)
        self._where = redact_url(database_url)
        self._reload = reload
        self._clock = clock

    async def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("not listening for key changes on %s: %s", self._where, exc)
                await self._clock.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = 1.0
            try:
                await self._listen(conn)
            finally:
                if not conn.is_closed():
                    await conn.close()

    async def _listen(self, conn: Any) -> None:
        """Until the connection is lost: reload at once (what changed while we were away), then
        at every notification (several queued at once make one reload)."""
        events: asyncio.Queue[str] = asyncio.Queue()
        await conn.add_listener(CREDENTIALS_CHANNEL, lambda *_: events.put_nowait("changed"))
        conn.add_termination_listener(lambda *_: events.put_nowait("lost"))
        log.info("listening for key changes on %s", self._where)
        event = "changed"
        while event != "lost":
            while not events.empty() and event != "lost":  # a burst: one reload
                event = events.get_nowait()
            if event == "lost":
                break
            await self._reload_safely()
            event = await events.get()
        log.warning("lost the connection that listens for key changes on %s; reconnecting", self._where)

    async def _reload_safely(self) -> None:
        try:
            await self._reload()
        except LanewayError as exc:  # the poll retries; a database error is not this loop's end
            log.warning("key reload after a change failed: %s", exc.message)
