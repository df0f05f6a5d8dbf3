"""Publisher tokens issued from the database (``laneway publishers tokens``), beside those of the
config file's ``publishers.tokens``. Kept like client keys: the secret is shown once, when it is
created, and only ``sha256:<hex>`` of it (``hash_key``) and its first characters are stored.

A running gateway reloads the active ones with its client keys (``Gateway.reload_keys``).
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from laneway.storage.errors import AlreadyExists, InvalidValue
from laneway.storage.models import PublisherTokenRow
from laneway.storage.repos import (
    DISPLAY_PREFIX_LEN,
    _check_name,
    _Repo,
    _rowcount,
    _runs_to_completion,
    hash_key,
)

SECRET_PREFIX = "lw-pub-"  # tells a publisher token from a client key ("lw-") at a glance
GLOB_MAX = 255


@dataclass(frozen=True)
class StoredPublisherToken:
    """A publisher token as stored: never its secret, only the secret's hash and first characters."""

    id: str
    name: str  # owns the sessions the token opens
    token_hash: str
    prefix: str
    names: tuple[str, ...]  # publisher-name globs
    models: tuple[str, ...]  # model-name globs
    created_at: datetime
    revoked_at: datetime | None
    join_declared: bool = False  # may publish a model a declared backend serves

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def _from_row(cls, row: PublisherTokenRow) -> StoredPublisherToken:
        return cls(
            id=row.id,
            name=row.name,
            token_hash=row.token_hash,
            prefix=row.prefix,
            names=tuple(row.names),
            models=tuple(row.models),
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            join_declared=row.join_declared,
        )


def _globs(what: str, given: Iterable[str]) -> list[str]:
    """The globs as given, duplicates dropped. One with whitespace is refused: it is a quoting
    mistake (``--names "a-* b-*"``) and would match no name."""
    globs = list(dict.fromkeys(given))
    for glob in globs:
        if not glob or len(glob) > GLOB_MAX or any(c.isspace() or not c.isprintable() for c in glob):
            raise InvalidValue(
                f"'{glob}' is not a valid {what} glob (no spaces; 1 to {GLOB_MAX} characters; "
                f"give several with --{what} GLOB --{what} GLOB)"
            )
    return globs


class PublisherTokenRepo(_Repo):
    """Publisher tokens issued through the CLI."""

    @_runs_to_completion
    async def create(
        self,
        name: str,
        names: Iterable[str],
        models: Iterable[str] = ("*",),
        *,
        join_declared: bool = False,
    ) -> tuple[StoredPublisherToken, str]:
        """A new token and its secret. The secret is returned here once and stored nowhere.
        ``names`` (at least one) are the publisher names it may register, ``models`` the model
        names it may publish (all, by default); ``join_declared`` lets it publish a model that a
        declared backend serves (as ``publishers.tokens[].join_declared``)."""
        _check_name("publisher token name", name)
        name_globs = _globs("names", names)
        if not name_globs:
            raise InvalidValue("a publisher token needs at least one publisher-name glob (--names)")
        model_globs = _globs("models", models) or ["*"]
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        row = PublisherTokenRow(
            id="ptok_" + secrets.token_hex(6),
            name=name,
            token_hash=hash_key(secret),
            prefix=secret[:DISPLAY_PREFIX_LEN],
            names=name_globs,
            models=model_globs,
            created_at=self._now(),
            revoked_at=None,
            join_declared=join_declared,
        )
        try:
            async with self._session(write=True) as s:
                s.add(row)
                await self._credentials_changed(s)
        except IntegrityError:
            # 256 random bits do not collide; the name is what is taken.
            raise AlreadyExists(
                f"an active publisher token named '{name}' already exists; "
                "revoke it first or choose another name"
            ) from None
        return StoredPublisherToken._from_row(row), secret

    @_runs_to_completion
    async def list(self, include_revoked: bool = False) -> builtins.list[StoredPublisherToken]:
        query = select(PublisherTokenRow).order_by(PublisherTokenRow.created_at, PublisherTokenRow.id)
        if not include_revoked:
            query = query.where(PublisherTokenRow.revoked_at.is_(None))
        async with self._session() as s:
            return [StoredPublisherToken._from_row(r) for r in (await s.scalars(query)).all()]

    @_runs_to_completion
    async def revoke(self, id_or_name: str) -> bool:
        """Revoke the active token with this id, else the active token with this name. False if
        neither."""
        now = self._now()
        async with self._session(write=True) as s:
            for column in (PublisherTokenRow.id, PublisherTokenRow.name):
                result = await s.execute(
                    update(PublisherTokenRow)
                    .where(column == id_or_name, PublisherTokenRow.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                if _rowcount(result) > 0:
                    await self._credentials_changed(s)
                    return True
        return False

    @_runs_to_completion
    async def active(self) -> dict[str, StoredPublisherToken]:
        """``token_hash -> token`` for every token that is not revoked."""
        query = select(PublisherTokenRow).where(PublisherTokenRow.revoked_at.is_(None))
        async with self._session() as s:
            return {r.token_hash: StoredPublisherToken._from_row(r) for r in (await s.scalars(query)).all()}
