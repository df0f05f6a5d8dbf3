"""Client API keys: kept as hashes, checked against an in-memory ring (no database per request)."""

from __future__ import annotations

import os

from laneway.config.schema import KeyConfig
from laneway.errors import AuthenticationFailed, ConfigError
from laneway.storage import hash_key


def config_key_hashes(keys: list[KeyConfig], source: str | None) -> dict[str, str]:
    """key hash → caller for the keys declared in the config file."""
    out: dict[str, str] = {}
    for i, k in enumerate(keys):
        if k.key_hash:
            digest = k.key_hash
        elif k.key_env:
            secret = os.environ.get(k.key_env)
            if not secret:
                raise ConfigError(
                    f"environment variable '{k.key_env}' is not set",
                    key=f"auth.keys[{i}].key_env",
                    file=source,
                )
            digest = hash_key(secret)
        else:
            digest = hash_key(k.key or "")
        out[digest] = k.caller or k.name
    return out


class KeyRing:
    """Which key hashes are valid, and whose they are. ``open_access`` lets every request in."""

    def __init__(self, *, open_access: bool = False) -> None:
        self.open_access = open_access
        self._callers: dict[str, str] = {}

    def replace(self, hashes: dict[str, str]) -> None:
        self._callers = dict(hashes)

    def __len__(self) -> int:
        return len(self._callers)

    def caller_for(self, authorization: str | None, api_key: str | None = None) -> str:
        """The caller a request is for, from ``Authorization: Bearer`` or ``x-api-key``."""
        secret = api_key
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                secret = token.strip()
        if not secret:
            if self.open_access:
                return "anonymous"
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
                "(create one with `laneway keys create NAME`)."
            )
        caller = self._callers.get(hash_key(secret))
        if caller is None:
            if self.open_access:
                return "anonymous"
            if not self._callers:
                raise AuthenticationFailed(
                    "No API keys are configured on this gateway; create one with `laneway keys create NAME` "
                    "or declare one under auth.keys in the config."
                )
            raise AuthenticationFailed(f"Incorrect API key provided: {secret[:6]}...")
        return caller
