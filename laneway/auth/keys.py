"""Client API keys: kept as hashes, checked against an in-memory ring (no database per request)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from laneway.config.schema import KeyConfig
from laneway.errors import AuthenticationFailed, ConfigError, InvalidRequest, PermissionDenied
from laneway.storage import StoredKey, hash_key


@dataclass(frozen=True, slots=True)
class Grant:
    """What a key may ask for beyond being let in."""

    max_priority: int = 0
    trusted: bool = False  # may name a sub-caller
    published_lanes: bool = True  # may be served by published (virtual) lanes


NO_GRANT = Grant()


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is for and what its key allows, as the request path needs it."""

    caller: str
    priority: int = 0
    admin: bool = False
    published_lanes: bool = True


def secret_digest(
    inline: str | None, env: str | None, digest: str | None, *, where: str, source: str | None
) -> str:
    """The ``sha256:<hex>`` of a secret the config gives inline, by environment variable, or as
    its hash; an unset variable is a config error naming ``where``."""
    if digest:
        return digest
    if env:
        secret = os.environ.get(env)
        if not secret:
            raise ConfigError(f"environment variable '{env}' is not set", key=where, file=source)
        return hash_key(secret)
    return hash_key(inline or "")


# (key hash -> caller, the hashes of admin keys, key hash -> grant): what ``KeyRing.replace`` takes.
KeyEntries = tuple[dict[str, str], frozenset[str], dict[str, Grant]]


def config_key_hashes(keys: list[KeyConfig], source: str | None) -> KeyEntries:
    """(key hash → caller, the hashes of admin keys, grants) for the keys declared in the config file."""
    out: dict[str, str] = {}
    admins: set[str] = set()
    grants: dict[str, Grant] = {}
    for i, k in enumerate(keys):
        digest = secret_digest(k.key, k.key_env, k.key_hash, where=f"auth.keys[{i}].key_env", source=source)
        out[digest] = k.caller or k.name
        if k.admin:
            admins.add(digest)
        grant = Grant(k.max_priority, k.trusted, k.published_lanes)
        if grant != NO_GRANT:
            grants[digest] = grant
    return out, frozenset(admins), grants


def stored_key_entries(stored: Mapping[str, StoredKey]) -> KeyEntries:
    """The same for the active keys of the database (``laneway keys create``), by hash."""
    grants = {
        digest: grant
        for digest, k in stored.items()
        if (grant := Grant(k.max_priority, k.trusted, k.published_lanes)) != NO_GRANT
    }
    admins = frozenset(digest for digest, k in stored.items() if k.admin)
    return {digest: k.caller for digest, k in stored.items()}, admins, grants


def merge_key_entries(config: KeyEntries, stored: KeyEntries) -> KeyEntries:
    """Both sources in one ring. A hash both hold is the config file's key: its caller, its admin
    flag and its grant, whatever the database says (as for publisher tokens)."""
    callers, admins, grants = config
    stored_callers, stored_admins, stored_grants = stored
    own = stored_callers.keys() - callers.keys()
    return (
        {**stored_callers, **callers},
        admins | (stored_admins & own),
        {**{h: g for h, g in stored_grants.items() if h in own}, **grants},
    )


class KeyRing:
    """Which key hashes are valid, and whose they are. ``open_access`` lets every request in."""

    def __init__(self, *, open_access: bool = False) -> None:
        self.open_access = open_access
        self._callers: dict[str, str] = {}
        self._admins: frozenset[str] = frozenset()
        self._grants: dict[str, Grant] = {}

    def replace(
        self,
        hashes: dict[str, str],
        *,
        admins: frozenset[str] = frozenset(),
        grants: dict[str, Grant] | None = None,
    ) -> None:
        self._callers = dict(hashes)
        self._admins = admins
        self._grants = dict(grants or {})

    def __len__(self) -> int:
        return len(self._callers)

    def caller_for(self, authorization: str | None, api_key: str | None = None) -> str:
        """The caller a request is for, from ``Authorization: Bearer`` or ``x-api-key``."""
        return self._identify(authorization, api_key)[0]

    def identify(
        self,
        authorization: str | None,
        api_key: str | None,
        *,
        sub_caller: str | None = None,
        priority: str | None = None,
    ) -> Identity:
        """Who a request is for: a trusted key may name a sub-caller (``x-laneway-caller``); a
        priority (``x-laneway-priority``) above what the key allows is lowered to that, not refused."""
        caller, digest = self._identify(authorization, api_key)
        grant = self._grants.get(digest, NO_GRANT) if digest else NO_GRANT
        if sub_caller:
            if not grant.trusted:
                raise PermissionDenied(
                    "This key may not name a sub-caller (x-laneway-caller); it needs trusted: true"
                )
            caller = f"{caller}/{sub_caller[:64]}"
        wanted = 0
        if priority:
            try:
                wanted = int(priority)
            except ValueError:
                raise InvalidRequest(
                    f"x-laneway-priority must be a whole number, not '{priority[:20]}'",
                    param="x-laneway-priority",
                ) from None
        admin = self.open_access or (digest is not None and digest in self._admins)
        return Identity(caller, max(0, min(wanted, grant.max_priority)), admin, grant.published_lanes)

    def _identify(self, authorization: str | None, api_key: str | None) -> tuple[str, str | None]:
        secret = _secret(authorization, api_key)
        if not secret:
            if self.open_access:
                return "anonymous", None
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
                "(create one with `laneway keys create NAME`)."
            )
        digest = hash_key(secret)
        caller = self._callers.get(digest)
        if caller is None:
            if self.open_access:
                return "anonymous", None
            if not self._callers:
                raise AuthenticationFailed(
                    "No API keys are configured on this gateway; create one with `laneway keys create NAME` "
                    "or declare one under auth.keys in the config."
                )
            raise AuthenticationFailed(f"Incorrect API key provided: {secret[:6]}...")
        return caller, digest

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
