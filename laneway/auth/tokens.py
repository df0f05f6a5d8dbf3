"""Publisher tokens: kept as hashes, scoped to the publisher names and model names they may use.

They are a separate ring from client keys: a client key is not a publisher token, and a
publisher token lets nobody call a model.

They come from two places: the config file's ``publishers.tokens`` (fixed for the process's life)
and the database (``laneway publishers tokens create``), whose active tokens the gateway reloads
every few seconds with ``replace_stored``. A hash both hold is the config file's grant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from laneway.auth.keys import secret_digest
from laneway.config.schema import PublisherTokenConfig
from laneway.errors import AuthenticationFailed, PermissionDenied
from laneway.storage import hash_key


@dataclass(frozen=True, slots=True)
class PublisherGrant:
    owner: str  # the token's name: owns the sessions it opens
    names: tuple[str, ...]  # publisher-name globs
    models: tuple[str, ...]  # model-name globs
    # May publish a model that a declared backend serves (sharing its traffic); off by default.
    join_declared: bool = False

    def check_name(self, name: str) -> None:
        if not any(fnmatchcase(name, pat) for pat in self.names):
            raise PermissionDenied(
                f"this publisher token may not publish as '{name}' (allowed: {', '.join(self.names)})",
                param="name",
            )

    def check_model(self, model: str) -> None:
        if not any(fnmatchcase(model, pat) for pat in self.models):
            raise PermissionDenied(
                f"this publisher token may not publish the model '{model}' "
                f"(allowed: {', '.join(self.models)})",
                param="lanes",
            )


class PublisherTokens:
    def __init__(self, tokens: list[PublisherTokenConfig], source: str | None = None) -> None:
        self._config: dict[str, PublisherGrant] = {}
        for i, t in enumerate(tokens):
            where = f"publishers.tokens[{i}].token_env"
            digest = secret_digest(t.token, t.token_env, t.token_hash, where=where, source=source)
            self._config[digest] = PublisherGrant(t.name, tuple(t.names), tuple(t.models), t.join_declared)
        # What ``identify`` reads: both sources merged, rebuilt on each change so a lookup stays
        # one dict access. Replaced whole, never mutated, so no caller sees it half-built.
        self._grants: dict[str, PublisherGrant] = dict(self._config)

    def replace_stored(self, grants: Mapping[str, PublisherGrant]) -> None:
        """Make ``grants`` (``token_hash -> grant``: the database's active tokens) the stored ones,
        dropping those no longer given. A token revoked since the last call is refused from now
        on, on every endpoint; the config file's tokens are kept and win a hash both hold."""
        self._grants = {**grants, **self._config}

    def owners(self) -> set[str]:
        """The names that own sessions through a valid token."""
        return {grant.owner for grant in self._grants.values()}

    def identify(self, authorization: str | None) -> PublisherGrant:
        """The grant of a ``Bearer`` publisher token; 401 for a missing or unknown one."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed(
                "Missing publisher token: send 'Authorization: Bearer <token>' "
                "(a publisher token from the gateway's publishers.tokens or "
                "`laneway publishers tokens create`, not a client key)"
            )
        grant = self._grants.get(hash_key(token.strip()))
        if grant is None:
            raise AuthenticationFailed("Invalid publisher token")
        return grant

    def __len__(self) -> int:
        return len(self._grants)
