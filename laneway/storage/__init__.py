"""Storage: declared state in SQL (SQLite or PostgreSQL, migrated by Alembic) and runtime state
behind the ``KeyValueStore`` interface (in memory, in a local directory, or in Redis for cluster
mode; ``open_runtime_store`` picks one by URL)."""

from laneway.storage.db import Database, create_engine, migrate
from laneway.storage.errors import AlreadyExists, DatabaseUnavailable, InvalidValue, StorageError
from laneway.storage.filestore import FileStore
from laneway.storage.redisstore import RedisStore
from laneway.storage.repos import BackendRepo, KeyRepo, StoredBackend, StoredKey, hash_key
from laneway.storage.runtime import KeyValueStore, MemoryStore, StoreUnavailable
from laneway.storage.stores import open_runtime_store, open_stores
from laneway.storage.urls import redact_url, sqlite_path, to_async_url

__all__ = [
    "AlreadyExists",
    "BackendRepo",
    "Database",
    "DatabaseUnavailable",
    "FileStore",
    "InvalidValue",
    "KeyRepo",
    "KeyValueStore",
    "MemoryStore",
    "RedisStore",
    "StorageError",
    "StoreUnavailable",
    "StoredBackend",
    "StoredKey",
    "create_engine",
    "hash_key",
    "migrate",
    "open_runtime_store",
    "open_stores",
    "redact_url",
    "sqlite_path",
    "to_async_url",
]
