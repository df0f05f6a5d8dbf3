"""Auth cooldown: a credential the upstream refused is left alone for a while.

A refused credential (``laneway.errors.classify``: a 401/403, or an error whose message says the
credentials are bad; never a timeout or a refused connection) puts the credential in a cooldown
(default 300 s) during which its backend's refreshes are skipped; when it expires the next
refresh runs and, if the operator fixed the key, the lanes come back by themselves.

Credentials are kept by fingerprint (a hash), never the secret. The cooldown lives in the
runtime store, so its TTL is the store's (memory: the injected clock; Redis: the server's) and
replicas sharing a Redis share cooldowns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from laneway.clock import Clock
from laneway.config.schema import BackendConfig
from laneway.storage.runtime import KeyValueStore

PREFIX = "cooldown:auth:"
DEFAULT_COOLDOWN = 300.0


def credential_fingerprint(config: BackendConfig) -> str:
    """Which credential a backend uses, without the secret: a hash of the key, or, for a backend
    without a key, of its URL (the "credential" is then the absence of one at that address)."""
    secret = config.resolve_api_key()
    material = f"key:{secret}" if secret else f"nokey:{config.provider}:{config.base_url}"
    return hashlib.sha256(material.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Cooldown:
    credential: str
    backend: str
    reason: str
    until: float  # wall-clock seconds


class AuthCooldowns:
    def __init__(self, store: KeyValueStore, clock: Clock, *, ttl: float = DEFAULT_COOLDOWN) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl

    def begin(self, credential: str, *, backend: str, reason: str) -> Cooldown:
        """A cooldown of ``credential`` from now: ``put`` it in the store for everyone to see."""
        return Cooldown(credential, backend, reason, self.clock.now() + self.ttl)

    async def put(self, cooldown: Cooldown) -> None:
        value = {"backend": cooldown.backend, "reason": cooldown.reason, "until": cooldown.until}
        ttl = max(0.001, cooldown.until - self.clock.now())  # a write that waited keeps the deadline
        await self.store.set(PREFIX + cooldown.credential, orjson.dumps(value), ttl=ttl)

    async def get(self, credential: str) -> Cooldown | None:
        raw = await self.store.get(PREFIX + credential)
        return _decode(credential, raw) if raw is not None else None

    async def lift(self, credential: str) -> bool:
        """End a cooldown early (the operator fixed the key and does not want to wait)."""
        return await self.store.delete(PREFIX + credential)

    async def all(self) -> list[Cooldown]:
        entries = await self.store.scan(PREFIX)
        found = [_decode(key[len(PREFIX) :], raw) for key, raw in entries.items()]
        return [c for c in found if c is not None]


def _decode(credential: str, raw: bytes) -> Cooldown | None:
    try:
        data = orjson.loads(raw)
        return Cooldown(credential, str(data["backend"]), str(data["reason"]), float(data["until"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # a value another version wrote: treat as no cooldown rather than crash
