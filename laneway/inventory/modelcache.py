"""The model-list cache for cloud backends.

A cloud provider's model list changes rarely and asking costs a round trip (and sometimes
quota), so it is cached (default 1 h) under the backend's name and a fingerprint of its
credential: rotating the key misses the cache at once. An empty list is never cached (a
provider that briefly answers nothing must not hide every model for an hour). Entries live in a
``KeyValueStore`` that honours the TTL: the local cache directory in the embedded default, so a
restart does not ask every provider again; Redis in cluster mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from laneway.providers.base import ModelInfo
from laneway.storage.runtime import KeyValueStore

PREFIX = "models:"
DEFAULT_TTL = 3600.0


def _key(backend: str, fingerprint: str) -> str:
    return f"{PREFIX}{backend}:{fingerprint}"


def _encode(models: list[ModelInfo], cached_at: float) -> bytes:
    return orjson.dumps(
        {
            "cached_at": cached_at,
            "models": [
                {
                    "id": m.id,
                    "types": sorted(m.types),
                    "capabilities": sorted(m.capabilities),
                    "context_length": m.context_length,
                    "loaded": m.loaded,
                }
                for m in models
            ],
        }
    )


def _decode(raw: bytes) -> tuple[list[ModelInfo], float] | None:
    try:
        data: dict[str, Any] = orjson.loads(raw)
        models = [
            ModelInfo(
                id=str(m["id"]),
                types=frozenset(m["types"]),
                capabilities=frozenset(m["capabilities"]),
                context_length=m.get("context_length"),
                loaded=m.get("loaded"),
            )
            for m in data["models"]
        ]
        return models, float(data["cached_at"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # unreadable: a miss, and the next put overwrites it


@dataclass(frozen=True, slots=True)
class CacheEntry:
    backend: str
    fingerprint: str
    models: int
    cached_at: float


class ModelListCache:
    def __init__(self, store: KeyValueStore, *, ttl: float = DEFAULT_TTL) -> None:
        self.store = store
        self.ttl = ttl

    async def get(self, backend: str, fingerprint: str) -> list[ModelInfo] | None:
        raw = await self.store.get(_key(backend, fingerprint))
        decoded = _decode(raw) if raw is not None else None
        return decoded[0] if decoded else None

    async def put(self, backend: str, fingerprint: str, models: list[ModelInfo], now: float) -> bool:
        """Cache ``models``; an empty list is not cached. Entries of the backend's former
        credentials go at once (they could never be read again)."""
        if not models:
            return False
        for key in await self.store.scan(f"{PREFIX}{backend}:"):
            if key != _key(backend, fingerprint):
                await self.store.delete(key)
        await self.store.set(_key(backend, fingerprint), _encode(models, now), ttl=self.ttl)
        return True

    async def invalidate(self, backend: str) -> int:
        """Forget one backend's list: its next refresh asks the provider."""
        keys = list(await self.store.scan(f"{PREFIX}{backend}:"))
        return sum([await self.store.delete(k) for k in keys])

    async def clear(self) -> int:
        return sum([await self.store.delete(k) for k in await self.store.scan(PREFIX)])

    async def entries(self) -> list[CacheEntry]:
        out = []
        for key, raw in (await self.store.scan(PREFIX)).items():
            _, backend, fingerprint = key.split(":", 2)
            decoded = _decode(raw)
            if decoded is not None:
                out.append(CacheEntry(backend, fingerprint, len(decoded[0]), decoded[1]))
        return out
