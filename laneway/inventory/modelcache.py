"""The model-list cache for cloud backends.

A cloud provider's model list changes rarely and asking costs a round trip (and sometimes
quota), so it is cached (default 1 h). An entry is keyed by the backend's name, its endpoint (a
fingerprint of its provider family and base URL) and a fingerprint of its credential: rotating
the key misses the cache at once, and two gateways that share a cache store (one data_dir, one
Redis) and both declare a backend ``oai`` with the same key but different base URLs each keep
their own list instead of serving the other's models. An empty list is never cached (a provider
that briefly answers nothing must not hide every model for an hour). Entries live in a
``KeyValueStore`` that honours the TTL: the local cache directory in the embedded default, so a
restart does not ask every provider again; Redis in cluster mode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from laneway.config.schema import BackendConfig
from laneway.inventory.cooldown import credential_fingerprint
from laneway.providers.base import ModelInfo
from laneway.storage.runtime import KeyValueStore

PREFIX = "models:"
DEFAULT_TTL = 3600.0


@dataclass(frozen=True, slots=True)
class ListScope:
    """Whose model list an entry holds: one backend name at one endpoint with one credential."""

    backend: str
    endpoint: str  # a fingerprint of the provider family and base URL
    credential: str  # ``credential_fingerprint``: a hash, never the secret

    @classmethod
    def of(cls, backend: str, config: BackendConfig) -> ListScope:
        where = f"{config.provider}\n{config.base_url}".encode()
        return cls(backend, hashlib.sha256(where).hexdigest()[:12], credential_fingerprint(config))

    @property
    def key(self) -> str:
        return f"{self.endpoint_prefix}{self.credential}"

    @property
    def endpoint_prefix(self) -> str:
        return f"{PREFIX}{self.backend}:{self.endpoint}:"


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
    fingerprint: str  # the credential's
    models: int
    cached_at: float
    endpoint: str = ""  # empty for an entry written before endpoints were part of the key


class ModelListCache:
    def __init__(self, store: KeyValueStore, *, ttl: float = DEFAULT_TTL) -> None:
        self.store = store
        self.ttl = ttl

    async def get(self, scope: ListScope) -> list[ModelInfo] | None:
        raw = await self.store.get(scope.key)
        decoded = _decode(raw) if raw is not None else None
        return decoded[0] if decoded else None

    async def put(self, scope: ListScope, models: list[ModelInfo], now: float) -> bool:
        """Cache ``models``; an empty list is not cached. Entries of the backend's former
        credentials at the same endpoint go at once (they could never be read again); another
        endpoint's entry under the same name may be another gateway's, and is left to its TTL."""
        if not models:
            return False
        for key in await self.store.scan(scope.endpoint_prefix):
            if key != scope.key:
                await self.store.delete(key)
        await self.store.set(scope.key, _encode(models, now), ttl=self.ttl)
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
            # models:BACKEND:ENDPOINT:CREDENTIAL (names and fingerprints hold no ':'), or an
            # older models:BACKEND:CREDENTIAL that still lives out its TTL.
            backend, *endpoint, fingerprint = key[len(PREFIX) :].split(":")
            decoded = _decode(raw)
            if decoded is not None:
                out.append(CacheEntry(backend, fingerprint, len(decoded[0]), decoded[1], ":".join(endpoint)))
        return out
