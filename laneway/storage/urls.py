"""Database URLs: what users write, what the async drivers need, and what messages may show."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError

from laneway.errors import ConfigError
from laneway.storage.errors import DatabaseUnavailable, StorageError


def to_async_url(url: str) -> str:
    """``sqlite:///x.db`` -> ``sqlite+aiosqlite:///x.db``; ``postgresql://...`` ->
    ``postgresql+asyncpg://...``. URLs that already name those drivers pass through."""
    parsed = parse_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "aiosqlite"):
        return _render(parsed.set(drivername="sqlite+aiosqlite"))
    if backend in ("postgresql", "postgres") and driver in ("", "asyncpg"):
        return _render(parsed.set(drivername="postgresql+asyncpg"))
    raise ConfigError(
        f"unsupported database URL '{redact_url(url)}': use sqlite:///path/to.db or postgresql://user@host/db",
        key="storage.database_url",
    )


def redact_url(url: str | URL) -> str:
    """The URL with its password replaced by ``***``, for messages and logs."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except ArgumentError:
        return "<unparseable URL>"
    return parsed.render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL; ``None`` for PostgreSQL and for in-memory SQLite."""
    parsed = parse_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def describe(url: str) -> str:
    """The database as messages name it: the URL (no password) and, for a SQLite file, the
    absolute path it opens. ``sqlite:///var/lib/x.db`` is relative to the working directory
    (four slashes make an absolute path), which is easy to miss in the URL alone."""
    shown = redact_url(url)
    path = sqlite_path(url) if is_sqlite(url) else None
    if path is None:
        return shown
    relative = "" if path.is_absolute() else "; a relative path: sqlite:////path/to.db for an absolute one"
    return f"{shown} (the file {Path.cwd() / path}{relative})"


def parse_url(url: str) -> URL:
    """``make_url``, with a message that says what a good URL looks like."""
    try:
        return make_url(url)
    except ArgumentError:
        raise ConfigError(
            "not a database URL: use sqlite:///path/to.db or postgresql://user@host/db",
            key="storage.database_url",
        ) from None


def _render(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return parse_url(url).drivername.startswith("sqlite")


def translate(url: str, exc: BaseException) -> StorageError:
    """A driver or SQLAlchemy exception as laneway's own: ``DatabaseUnavailable`` when the database
    cannot be reached or opened, else ``StorageError``. Both name the database, never its password."""
    if isinstance(exc, OSError | OperationalError | InterfaceError):
        return unavailable(url, exc)
    return StorageError(f"database error at {redact_url(url)}: {_reason(exc)}")


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    """One line that names the database (never its password), the cause, and what to check."""
    if is_sqlite(url):
        hint = "check that the file and its directory are writable"
    else:
        hint = "check that PostgreSQL is running and reachable, the database exists and the user may connect"
    return DatabaseUnavailable(
        f"cannot use the database at {describe(url)}: {_reason(exc)}; {hint} "
        "(storage.database_url in the config, or --database-url)"
    )


def _reason(exc: BaseException) -> str:
    # SQLAlchemy wraps the driver's exception (``.orig``), and its adapters wrap asyncpg's in turn;
    # the innermost non-empty message is the one that helps.
    seen: BaseException | None = getattr(exc, "orig", None) or exc
    best = str(exc)
    while seen is not None:
        words = str(seen).strip()
        if words:
            best = words
            break
        seen = seen.__cause__
    line = best.strip().splitlines()[0] if best.strip() else type(exc).__name__
    return line
