"""The credential watch on a real PostgreSQL database: a reload when it starts listening, one per
burst of notifications, and one after it reconnects (a change may have been missed while away)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from laneway.clock import SystemClock
from laneway.cluster.credentials import CredentialWatch, plain_dsn
from laneway.storage import Database
from laneway.storage.repos import CREDENTIALS_CHANNEL
from laneway.testing import captured_logs
from tests.conftest import fresh_pg_database

pytestmark = pytest.mark.anyio


async def until(check: object, what: str) -> None:
    for _ in range(200):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def test_plain_dsn_keeps_the_password_and_drops_the_driver() -> None:
    assert plain_dsn("postgresql+asyncpg://u:pw@h:5433/db") == "postgresql://u:pw@h:5433/db"


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


async def test_reloads_on_listen_on_each_change_and_after_a_lost_connection(database_url: str) -> None:
    reloads = 0

    async def reload() -> None:
        nonlocal reloads
        reloads += 1

    with captured_logs("laneway.cluster") as lines:
        watch = asyncio.create_task(CredentialWatch(database_url, reload, SystemClock()).run())
        admin = await asyncpg.connect(plain_dsn(database_url))
        try:
            await until(lambda: reloads == 1, "the reload when it starts listening")
            db = await Database.open(database_url)
            try:
                await db.keys.create("team")  # the write notifies, in its own transaction
                await until(lambda: reloads == 2, "a reload for the new key")
                assert await db.keys.revoke("team")
                await until(lambda: reloads == 3, "a reload for the revocation")
                assert not await db.keys.revoke("team")  # nothing changed: nothing notified
            finally:
                await db.aclose()
            await admin.execute("SELECT pg_notify($1, '')", CREDENTIALS_CHANNEL)
            await until(lambda: reloads == 4, "a reload for any notification")
            # Its connection is cut (a failover, a restart): it reconnects and reloads once more.
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%'"
            )
            await until(lambda: reloads == 5, "a reload after reconnecting")
            said = [line["event"].split(" on ")[0] for line in lines]
            assert said == [
                "listening for key changes",
                "lost the connection that listens for key changes",
                "listening for key changes",
            ]
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await admin.close()
