"""Client API keys: kept as hashes, checked against an in-memory ring (no database per request)."""

from __future__ import annotations

import os

from laneway.config.schema import KeyConfig
from laneway.errors import AuthenticationFailed, ConfigError, PermissionDenied
from laneway.storage import hash_key


def config_key_hashes(keys: list[KeyConfig], source: str | None) -> tuple[dict[str, str], frozenset[str]]:
    """(key hash → caller, the hashes of admin keys) for the keys declared in the config file."""
    out: dict[str, str] = {}
    admins: set[str] = set()
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
        if k.admin:
            admins.add(digest)
    return out, frozenset(admins)


class KeyRing:
    """Which key hashes are valid, and whose they are. ``open_access`` lets every request in."""

    def __init__(self, *, open_access: bool = False) -> None:
        self.open_access = open_access
        self._callers: dict[str, str] = {}
        self._admins: frozenset[str] = frozenset()

    def replace(self, hashes: dict[str, str], *, admins: frozenset[str] = frozenset()) -> None:
        self._callers = dict(hashes)
        self._admins = admins

    def __len__(self) -> int:
        return len(self._callers)

    def caller_for(self, authorization: str | None, api_key: str | None = None) -> str:
        """The caller a request is for, from ``Authorization: Bearer`` or ``x-api-key``."""
        secret = _secret(authorization, api_key)
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

    def require_admin(self, authorization: str | None, api_key: str | None = None) -> str:
        """The caller, if its key may use the admin API (any key may, with open access)."""
        if not self.open_access and _secret(authorization, api_key) is None:
            raise AuthenticationFailed(
                "The admin API needs an admin key: send 'Authorization: Bearer <key>' with a key "
                "declared with 'admin: true' under auth.keys."
            )
        caller = self.caller_for(authorization, api_key)
        if self.open_access:
            return caller
        secret = _secret(authorization, api_key)
        if secret is None or hash_key(secret) not in self._admins:
            raise PermissionDenied(
                "This key may not use the admin API; use a key declared with 'admin: true' under auth.keys."
            )
        return caller


def _secret(authorization: str | None, api_key: str | None) -> str | None:
    secret = api_key
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            secret = token.strip()
    return secret or None
