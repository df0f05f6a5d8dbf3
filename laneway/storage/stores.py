"""Choosing a runtime store by URL, as ``storage.runtime_url`` says."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from laneway.clock import Clock
from laneway.storage.filestore import FileStore
from laneway.storage.redisstore import RedisBreaker, RedisStore, redact_redis_url
from laneway.storage.runtime import KeyValueStore, MemoryStore

ACCEPTED = (
    "memory:// (this process only), file:///absolute/path (a local directory; file:// alone is the "
    "cache directory), redis://host:port/db or rediss://... (shared by every replica)"
)


def open_runtime_store(
    url: str,
    clock: Clock,
    *,
    cache_dir: str | Path | None = None,
    namespace: str = "laneway:",
    timeout: float = 5.0,
) -> KeyValueStore:
    """The ``KeyValueStore`` that ``url`` names. Nothing is opened or connected yet: each store
    creates or connects on first use. ``cache_dir`` is where ``file://`` without a path points
    (the embedded default's local cache directory). The clock drives memory and file TTLs; Redis
    keeps time on its server, keeps every key under ``namespace``, and gives up on a call after
    ``timeout`` seconds (a breaker on the injected clock then stops trying for a moment)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "memory" and not (parts.netloc or parts.path or parts.query):
        return MemoryStore(clock)
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and not parts.query:
        if parts.path:
            path = Path(urllib.parse.unquote(parts.path))
            if path.is_absolute():
                return FileStore(path, clock)
        elif cache_dir is not None:
            return FileStore(cache_dir, clock)
        else:
            raise ValueError("runtime store URL 'file://' names the cache directory, and none is configured")
    if parts.scheme in ("redis", "rediss") and parts.hostname:
        return RedisStore(url, namespace=namespace, timeout=timeout, breaker=RedisBreaker(clock))
    raise ValueError(f"unsupported runtime store URL '{_shown(url)}': use {ACCEPTED}")


def _shown(url: str) -> str:
    try:
        return redact_redis_url(url)
    except ValueError:
        return "<unparseable URL>"


def open_stores(
    runtime_url: str,
    data_dir: str | Path,
    clock: Clock,
    *,
    namespace: str = "laneway:",
    timeout: float = 5.0,
) -> tuple[KeyValueStore, KeyValueStore]:
    """(runtime store, cache store). Embedded default: runtime state in memory, caches that should
    survive a restart (model lists, signals) in the data directory's ``cache``. Cluster mode:
    both in Redis."""
    runtime = open_runtime_store(runtime_url, clock, namespace=namespace, timeout=timeout)
    if runtime_url == "memory://":
        return runtime, FileStore(Path(data_dir) / "cache", clock)
    return runtime, runtime
