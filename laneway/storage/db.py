"""The declared-state database: engines, migrations and the ``Database`` handle.

Users write ``sqlite:///path/to.db`` or ``postgresql://user@host:port/db``; internally those run on
the async drivers (aiosqlite, asyncpg; see ``urls``). ``Database.open`` upgrades the schema to
head before anything else touches it, so every process (server, CLI) sees the schema it was
built for. Migrations live in ``migrations/`` and need no alembic.ini on disk.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

from laneway.clock import Clock, SystemClock
from laneway.storage.errors import DatabaseUnavailable
from laneway.storage.failovers_repo import FailoverRepo
from laneway.storage.publisher_tokens import PublisherTokenRepo
from laneway.storage.repos import BackendRepo, Inflight, KeyRepo
from laneway.storage.responses_repo import ResponsesRepo
from laneway.storage.urls import (
    describe,
    is_sqlite,
    parse_url,
    redact_url,
    sqlite_path,
    to_async_url,
    translate,
    unavailable,
)
from laneway.storage.usage_repo import UsageRepo

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
CONNECT_TIMEOUT = 10.0  # seconds to reach PostgreSQL before we say it cannot be reached
# Any constant works; every laneway replica must use the same one (pg_advisory_xact_lock key).
_MIGRATION_LOCK_ID = 0x1A9E3A7


def create_engine(url: str) -> AsyncEngine:
    """An async engine with sane options for each dialect. For SQLite the parent directory is
    created and every connection runs in WAL mode (readers never wait for the writer)."""
    async_url = parse_url(to_async_url(url))
    if is_sqlite(url):
        path = sqlite_path(url)
        options: dict[str, Any] = {"connect_args": {"timeout": 30}}
        if path is None:
            # One shared connection, or each new connection would see its own empty database.
            options["poolclass"] = StaticPool
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailable(
                    f"cannot create the directory for the database at {describe(url)}: {exc.strerror}; "
                    "check that the path is writable (storage.data_dir or storage.database_url)"
                ) from None
            _can_open(url, path)
        engine = create_async_engine(async_url, **options)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        async_url,
        pool_pre_ping=True,  # replicas outlive PostgreSQL restarts and idle-connection reapers
        pool_recycle=1800,
        connect_args={"timeout": CONNECT_TIMEOUT},
    )


def _can_open(url: str, path: Path) -> None:
    """Open the file once with the standard library first. A file aiosqlite fails to open leaves
    its worker thread posting to an event loop that may be closed by then, which prints a
    thread's traceback after our one-line error; failing here, there is no thread yet."""
    try:
        sqlite3.connect(path).close()
    except sqlite3.Error as exc:
        raise unavailable(url, exc) from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, much faster
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


# --- migrations ---------------------------------------------------------------------------------


def alembic_config() -> Config:
    """Alembic's configuration, built in code: no alembic.ini is needed on disk."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


async def migrate(url: str) -> None:
    """Upgrade the database at ``url`` to the newest schema. Running it again is a no-op."""
    engine = create_engine(url)
    try:
        await _upgrade(engine, url)
    finally:
        await engine.dispose()


async def _upgrade(engine: AsyncEngine, url: str) -> None:
    try:
        conn = await engine.connect()
    except (SQLAlchemyError, OSError) as exc:
        # Whatever the driver says (refused, unknown host, no such database or role), we could not get in.
        raise unavailable(url, exc) from None
    try:
        async with conn.begin():
            if conn.dialect.name == "postgresql":
                # Replicas starting together must not race each other through the same migration.
                await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            await conn.run_sync(_upgrade_sync)
    except (SQLAlchemyError, OSError) as exc:
        raise translate(url, exc) from None
    finally:
        await conn.close()


def _upgrade_sync(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


# --- the handle ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseStatistics:
    in_flight: int  # operations running, including those whose callers were cancelled


class Database:
    """The declared-state database: an engine, a session factory and one repository per table.

    ``Database.open(url)`` connects and migrates; ``aclose()`` releases the pool. It is also an
    async context manager.
    """

    def __init__(self, engine: AsyncEngine, *, url: str, clock: Clock | None = None) -> None:
        self.engine = engine
        self.url = redact_url(url)
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        clock = clock or SystemClock()
        self._inflight = Inflight()
        self.backends = BackendRepo(self._sessions, clock=clock, url=url, inflight=self._inflight)
        self.keys = KeyRepo(self._sessions, clock=clock, url=url, inflight=self._inflight)
        self.publisher_tokens = PublisherTokenRepo(
            self._sessions, clock=clock, url=url, inflight=self._inflight
        )
        self.usage = UsageRepo(self._sessions, clock=clock, url=url, inflight=self._inflight)
        self.responses = ResponsesRepo(self._sessions, clock=clock, url=url, inflight=self._inflight)
        self.failovers = FailoverRepo(self._sessions, clock=clock, url=url, inflight=self._inflight)

    @classmethod
    async def open(cls, url: str, *, clock: Clock | None = None, migrate: bool = True) -> Database:
        engine = create_engine(url)
        try:
            if migrate:
                await _upgrade(engine, url)
        except BaseException:
            # Cancelled or failed half-way: do not leave a pool (and its connections) behind.
            await engine.dispose()
            raise
        return cls(engine, url=url, clock=clock)

    def statistics(self) -> DatabaseStatistics:
        return DatabaseStatistics(in_flight=len(self._inflight))

    async def wait_idle(self) -> None:
        """Wait for operations still running after their callers were cancelled."""
        await self._inflight.wait()

    async def aclose(self) -> None:
        await self.wait_idle()
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<Database {self.url}: {len(self._inflight)} operations in flight>"
