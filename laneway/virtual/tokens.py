"""Publisher tokens: kept as hashes, scoped to the publisher names and model names they may use.

They are a separate ring from client keys: a client key is not a publisher token, and a
publisher token lets nobody call a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fnmatch import fnmatchcase

from laneway.config.schema import PublisherTokenConfig
from laneway.errors import AuthenticationFailed, ConfigError, PermissionDenied
from laneway.storage import hash_key


@dataclass(frozen=True, slots=True)
class PublisherGrant:
    owner: str  # the token's name: owns the sessions it opens
    names: tuple[str, ...]  # publisher-name globs
    models: tuple[str, ...]  # model-name globs

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
        self._grants: dict[str, PublisherGrant] = {}
        for i, t in enumerate(tokens):
            if t.token_hash:
                digest = t.token_hash
            elif t.token_env:
                secret = os.environ.get(t.token_env)
                if not secret:
                    raise ConfigError(
                        f"environment variable '{t.token_env}' is not set",
                        key=f"publishers.tokens[{i}].token_env",
                        file=source,
                    )
                digest = hash_key(secret)
            else:
                digest = hash_key(t.token or "")
            self._grants[digest] = PublisherGrant(t.name, tuple(t.names), tuple(t.models))

    def identify(self, authorization: str | None) -> PublisherGrant:
        """The grant of a ``Bearer`` publisher token; 401 for a missing or unknown one."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed(
                "Missing publisher token: send 'Authorization: Bearer <token>' "
                "(a publisher token from the gateway's publishers.tokens, not a client key)"
            )
        grant = self._grants.get(hash_key(token.strip()))
        if grant is None:
            raise AuthenticationFailed("Invalid publisher token")
        return grant

    def __len__(self) -> int:
        return len(self._grants)
