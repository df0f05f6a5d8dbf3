"""Storage: declared state in SQL (SQLite or PostgreSQL, migrated by Alembic) and runtime state
behind the ``KeyValueStore`` interface (in memory now; Redis in cluster mode)."""

from laneway.storage.db import Database, create_engine, migrate
from laneway.storage.errors import AlreadyExists, DatabaseUnavailable, InvalidValue, StorageError
from laneway.storage.repos import BackendRepo, KeyRepo, StoredBackend, StoredKey, hash_key
from laneway.storage.runtime import KeyValueStore, MemoryStore
from laneway.storage.urls import redact_url, sqlite_path, to_async_url

__all__ = [
    "AlreadyExists",
    "BackendRepo",
    "Database",
    "DatabaseUnavailable",
    "InvalidValue",
    "KeyRepo",
    "KeyValueStore",
    "MemoryStore",
    "StorageError",
    "StoredBackend",
    "StoredKey",
    "create_engine",
    "hash_key",
    "migrate",
    "redact_url",
    "sqlite_path",
    "to_async_url",
]
