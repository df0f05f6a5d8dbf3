"""Repositories: the only code that touches the ORM rows. They hand out frozen dataclasses and
translate SQLAlchemy and driver exceptions into ``laneway.storage.errors``.

Secrets never reach the database: a backend stores the *name* of the environment variable that
holds its key, and a client key is stored as ``sha256:<hex>`` of the secret (``hash_key``).
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import hashlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from pydantic import ValidationError
from sqlalchemy import CursorResult, delete, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from laneway.clock import Clock
from laneway.config.schema import NAME_RE, BackendConfig
from laneway.storage.errors import AlreadyExists, InvalidValue, StorageError
from laneway.storage.models import ApiKeyRow, BackendRow
from laneway.storage.urls import is_sqlite, translate

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R", bound="_Repo")

SECRET_PREFIX = "lw-"
DISPLAY_PREFIX_LEN = 12
MIN_PRIORITY, MAX_PRIORITY = 0, 9  # as KeyConfig.max_priority
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
# BackendConfig fields that have their own column; every other field goes to ``options``.
_BACKEND_COLUMNS = frozenset({"provider", "base_url", "api_key_env", "tier", "models"})
_TOUCH_BATCH = 500  # hashes per UPDATE, well under every dialect's bound-parameter limit


def hash_key(secret: str) -> str:
    """How a client key is stored and looked up: ``sha256:<64 hex digits>`` (as in ``key_hash:``)."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class StoredBackend:
    """A backend declared in the database (not in the config file)."""

    name: str
    provider: str
    base_url: str
    api_key_env: str | None
    tier: str | None
    models: tuple[str | dict[str, Any], ...]  # a name, or a declared model's fields
    options: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime

    @property
    def config(self) -> BackendConfig:
        """The same ``BackendConfig`` the config file would give for this backend."""
        data = {
            "provider": self.provider,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "tier": self.tier,
            "models": list(self.models),
            **self.options,
        }
        try:
            return BackendConfig.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise StorageError(
                f"backend '{self.name}' in the database is no longer valid ({field}: {first['msg']}); "
                "remove it and add it again"
            ) from None

    @classmethod
    def _from_row(cls, row: BackendRow) -> StoredBackend:
        return cls(
            name=row.name,
            provider=row.provider,
            base_url=row.base_url,
            api_key_env=row.api_key_env,
            tier=row.tier,
            models=tuple(row.models),
            options=dict(row.options),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


@dataclass(frozen=True)
class StoredKey:
    """A client API key as stored: never its secret, only the secret's hash and first characters."""

    id: str
    name: str
    caller: str
    key_hash: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    # What it may do beyond calling models; the same grants as a key under auth.keys.
    admin: bool = False
    trusted: bool = False
    max_priority: int = 0
    published_lanes: bool = True

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def _from_row(cls, row: ApiKeyRow) -> StoredKey:
        return cls(
            id=row.id,
            name=row.name,
            caller=row.caller,
            key_hash=row.key_hash,
            prefix=row.prefix,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            last_used_at=row.last_used_at,
            admin=row.admin,
            trusted=row.trusted,
            max_priority=row.max_priority,
            published_lanes=row.published_lanes,
        )


class Inflight:
    """Database operations run to completion even when their caller is cancelled.

    The caller leaves at once (its cancellation propagates), while the operation finishes in its
    own task: a transaction is never cut in half, no connection is terminated mid-protocol (which
    asyncpg does not always survive cleanly), and a cancellation lands between operations, never
    inside one. ``wait()`` waits for those that are still running; ``Database.aclose`` calls it.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, operation: Coroutine[Any, Any, T]) -> T:
        task = asyncio.create_task(operation)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(_report_orphan)
            raise

    async def wait(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))


def _report_orphan(task: asyncio.Task[Any]) -> None:
    # Nobody awaits this task any more; retrieve its outcome so a failure is logged once, by us.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("a database operation whose caller was cancelled failed: %s", exc)


def _runs_to_completion(
    method: Callable[Concatenate[R, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[R, P], Coroutine[Any, Any, T]]:
    @functools.wraps(method)
    async def wrapper(self: R, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._inflight.run(method(self, *args, **kwargs))

    return wrapper


# The PostgreSQL notification channel on which a change of keys or publisher tokens is announced.
CREDENTIALS_CHANNEL = "laneway_credentials"


class _Repo:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock,
        url: str,
        inflight: Inflight | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._url = url
        self._inflight = inflight if inflight is not None else Inflight()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    async def _credentials_changed(self, s: AsyncSession) -> None:
        """Tell every replica listening on this PostgreSQL database that keys or tokens changed
        (``cluster.credentials``): the notification leaves when this transaction commits, and
        not at all if it rolls back. SQLite has no such thing; its gateway polls."""
        if not is_sqlite(self._url):
            await s.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CREDENTIALS_CHANNEL})

    @asynccontextmanager
    async def _session(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A session (in a transaction that commits on success when ``write``). A cancellation or
        error rolls back; IntegrityError is left for the caller, which knows what was duplicated."""
        try:
            async with self._sessions() as session:
                if write:
                    async with session.begin():
                        yield session
                else:
                    yield session
        except IntegrityError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise translate(self._url, exc) from None


def _check_name(what: str, value: str) -> None:
    if not NAME_RE.match(value):
        raise InvalidValue(f"'{value}' is not a valid {what} (letters, digits, '.', '_', '-'; at most 63)")


class BackendRepo(_Repo):
    """Backends declared through the CLI or admin API."""

    @_runs_to_completion
    async def list(self) -> builtins.list[StoredBackend]:
        async with self._session() as s:
            rows = (await s.scalars(select(BackendRow).order_by(BackendRow.name))).all()
            return [StoredBackend._from_row(r) for r in rows]

    @_runs_to_completion
    async def get(self, name: str) -> StoredBackend | None:
        async with self._session() as s:
            row = await s.get(BackendRow, name)
            return StoredBackend._from_row(row) if row is not None else None

    @_runs_to_completion
    async def add(self, name: str, config: BackendConfig) -> StoredBackend:
        """Store a new backend. Raises ``AlreadyExists`` if ``name`` is taken, ``InvalidValue`` for a
        bad name or an inline ``api_key`` (secrets live in the environment, never in the database)."""
        _check_name("backend name", name)
        if config.api_key:
            raise InvalidValue(
                "an inline api_key is never stored in the database; put the secret in an environment "
                "variable and give its name as api_key_env"
            )
        if config.api_key_env is not None and not ENV_NAME_RE.match(config.api_key_env):
            raise InvalidValue(f"'{config.api_key_env}' is not an environment variable name (api_key_env)")
        now = self._now()
        row = BackendRow(
            name=name,
            provider=config.provider,
            base_url=config.base_url,
            api_key_env=config.api_key_env,
            tier=config.tier,
            models=config.model_dump(mode="json", include={"models"})["models"],
            # Only what differs from the defaults, so a backend stored today follows tomorrow's
            # defaults exactly like one declared in the config file does.
            options=config.model_dump(
                mode="json", exclude=set(_BACKEND_COLUMNS | {"api_key"}), exclude_defaults=True
            ),
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._session(write=True) as s:
                s.add(row)
        except IntegrityError:
            raise AlreadyExists(f"a backend named '{name}' already exists in the database") from None
        return StoredBackend._from_row(row)

    @_runs_to_completion
    async def remove(self, name: str) -> bool:
        """Delete ``name``; False if there was no such backend."""
        async with self._session(write=True) as s:
            result = await s.execute(delete(BackendRow).where(BackendRow.name == name))
            return _rowcount(result) > 0


class KeyRepo(_Repo):
    """Client API keys. The gateway keeps ``active_hashes()`` in memory: no query per request."""

    @_runs_to_completion
    async def create(
        self,
        name: str,
        caller: str | None = None,
        *,
        admin: bool = False,
        trusted: bool = False,
        max_priority: int = 0,
        published_lanes: bool = True,
    ) -> tuple[StoredKey, str]:
        """A new key and its secret. The secret is returned here once and stored nowhere. The
        grants are those of ``auth.keys``: ``admin`` (the admin API), ``trusted`` (may name a
        sub-caller), ``max_priority`` (0-9) and ``published_lanes`` (may be served by them)."""
        _check_name("key name", name)
        caller = caller or name
        _check_name("caller", caller)
        if not MIN_PRIORITY <= max_priority <= MAX_PRIORITY:
            raise InvalidValue(
                f"max_priority must be from {MIN_PRIORITY} to {MAX_PRIORITY}, not {max_priority}"
            )
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id="key_" + secrets.token_hex(6),
            name=name,
            caller=caller,
            key_hash=hash_key(secret),
            prefix=secret[:DISPLAY_PREFIX_LEN],
            created_at=self._now(),
            revoked_at=None,
            last_used_at=None,
            admin=admin,
            trusted=trusted,
            max_priority=max_priority,
            published_lanes=published_lanes,
        )
        try:
            async with self._session(write=True) as s:
                s.add(row)
                await self._credentials_changed(s)
        except IntegrityError:
            # 256 random bits do not collide; the name is what is taken.
            raise AlreadyExists(
                f"an active key named '{name}' already exists; revoke it first or choose another name"
            ) from None
        return StoredKey._from_row(row), secret

    @_runs_to_completion
    async def list(self, include_revoked: bool = False) -> builtins.list[StoredKey]:
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        async with self._session() as s:
            return [StoredKey._from_row(r) for r in (await s.scalars(query)).all()]

    @_runs_to_completion
    async def revoke(self, id_or_name: str) -> bool:
        """Revoke the active key with this id, else the active key with this name. False if neither."""
        now = self._now()
        async with self._session(write=True) as s:
            for column in (ApiKeyRow.id, ApiKeyRow.name):
                result = await s.execute(
                    update(ApiKeyRow)
                    .where(column == id_or_name, ApiKeyRow.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                if _rowcount(result) > 0:
                    await self._credentials_changed(s)
                    return True
        return False

    @_runs_to_completion
    async def active(self) -> dict[str, StoredKey]:
        """``key_hash -> key`` for every key that is not revoked: what the gateway reloads."""
        query = select(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))
        async with self._session() as s:
            return {r.key_hash: StoredKey._from_row(r) for r in (await s.scalars(query)).all()}

    @_runs_to_completion
    async def active_hashes(self) -> dict[str, str]:
        """``key_hash -> caller`` for every key that is not revoked."""
        query = select(ApiKeyRow.key_hash, ApiKeyRow.caller).where(ApiKeyRow.revoked_at.is_(None))
        async with self._session() as s:
            return {h: c for h, c in (await s.execute(query)).all()}

    @_runs_to_completion
    async def touch(self, hashes: Iterable[str]) -> None:
        """Record that these keys were used now (batched by the caller, off the request path)."""
        pending = sorted(set(hashes))
        if not pending:
            return
        now = self._now()
        async with self._session(write=True) as s:
            for i in range(0, len(pending), _TOUCH_BATCH):
                batch = pending[i : i + _TOUCH_BATCH]
                await s.execute(
                    update(ApiKeyRow).where(ApiKeyRow.key_hash.in_(batch)).values(last_used_at=now)
                )


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return result.rowcount
