"""The declared-state tables (backends, client keys, publisher tokens), the usage and failover
records and the stored responses of the Responses API.
``migrations/versions`` must produce exactly this schema; a test compares the two with Alembic's
autogenerate so they cannot drift apart.

ORM rows never leave ``laneway.storage``: the repositories hand out frozen dataclasses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints, so a later migration can drop or alter them by name on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every dialect. SQLite keeps no zone, so what it returns is naive;
    we store UTC and put the zone back when reading."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


class BackendRow(Base):
    """A backend declared through the CLI or admin API (the config file's backends live in the file).
    Secrets are never stored: only the name of the environment variable that holds one."""

    __tablename__ = "backends"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    base_url: Mapped[str] = mapped_column(Text)
    api_key_env: Mapped[str | None] = mapped_column(String(255))
    tier: Mapped[str | None] = mapped_column(String(32))
    models: Mapped[list[str]] = mapped_column()
    # Every other BackendConfig field that differs from its default (timeout, weight, allow, ...).
    options: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column()


class ApiKeyRow(Base):
    """A client API key. Only ``sha256:<hex>`` of the secret is kept, plus its first characters
    so people can tell keys apart."""

    __tablename__ = "api_keys"
    __table_args__ = (
        # A name picks one key while it is active (``keys revoke NAME``); revoked keys keep theirs.
        Index(
            "uq_api_keys_active_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    caller: Mapped[str] = mapped_column(String(63))
    key_hash: Mapped[str] = mapped_column(String(71), unique=True)  # "sha256:" + 64 hex digits
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()
    # What the key may do beyond calling models, as ``auth.keys`` grants it (migration 0004; the
    # server defaults are what keys created before it get: no more than they could do then).
    admin: Mapped[bool] = mapped_column(Boolean(), server_default=false())
    trusted: Mapped[bool] = mapped_column(Boolean(), server_default=false())
    max_priority: Mapped[int] = mapped_column(Integer(), server_default=text("0"))
    published_lanes: Mapped[bool] = mapped_column(Boolean(), server_default=true())


class PublisherTokenRow(Base):
    """A publisher token issued with ``laneway publishers tokens create`` (the config file's live in
    the file). Like a client key: only ``sha256:<hex>`` of the secret and its first characters are
    kept. ``names`` and ``models`` are the globs it may publish as and publish."""

    __tablename__ = "publisher_tokens"
    __table_args__ = (
        # A name picks one token while it is active (``tokens revoke NAME``); revoked ones keep theirs.
        Index(
            "uq_publisher_tokens_active_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))  # owns the sessions the token opens
    token_hash: Mapped[str] = mapped_column(String(71), unique=True)  # "sha256:" + 64 hex digits
    prefix: Mapped[str] = mapped_column(String(12))
    names: Mapped[list[str]] = mapped_column()
    models: Mapped[list[str]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    # May publish a model a declared backend serves (migration 0004; off for older tokens).
    join_declared: Mapped[bool] = mapped_column(Boolean(), server_default=false())


class UsageRow(Base):
    """One served request: who asked for what, which lane served it, and the tokens the upstream
    reported (NULL when it did not say). Written in batches by ``laneway.usage.UsageRecorder``;
    read by ``laneway usage`` and ``GET /admin/usage``, which filter on time and group by caller."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_at", "at"),  # "since ..." over everyone
        Index("ix_usage_records_caller_at", "caller", "at"),  # one caller's usage over time
    )

    # BIGINT on PostgreSQL (usage outgrows 2**31 rows); SQLite's rowid alias must read INTEGER.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column()
    caller: Mapped[str] = mapped_column(String(255))
    requested: Mapped[str] = mapped_column(String(255))
    lane: Mapped[str] = mapped_column(String(255))
    backend: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer())
    completion_tokens: Mapped[int | None] = mapped_column(Integer())
    request_id: Mapped[str] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer())
    streamed: Mapped[bool] = mapped_column(Boolean())
    # The replica that served it (``cluster.replica_id``; migration 0006: '' for older rows).
    replica: Mapped[str] = mapped_column(String(255), server_default="")


class FailoverRow(Base):
    """One request that needed more than one attempt, or failed (``laneway.failovers``): each
    attempt's lane, outcome, error and timings (``attempts``, as ``Attempt`` fields) and the
    replica that handled it. Written in batches by the gateway's failover writer; read by
    ``GET /admin/failovers`` (every replica's, newest first); rows older than
    ``routing.failover_retention`` are not shown and are swept. ``id`` is the record's own (a
    request id is the client's and need not be unique): a batch written twice adds nothing."""

    __tablename__ = "failover_records"
    __table_args__ = (Index("ix_failover_records_started_at", "started_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    started_at: Mapped[datetime] = mapped_column()
    replica: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str] = mapped_column(String(255))
    run_id: Mapped[str | None] = mapped_column(String(255))
    caller: Mapped[str] = mapped_column(String(255))
    requested: Mapped[str] = mapped_column(String(255))
    operation: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(32))
    served_by: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[list[Any]] = mapped_column(JSON())
    prompt: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)  # routing.record_prompts


class ResponseRow(Base):
    """A stored response of the Responses API (``store: true``): whose it is (only that caller
    may read, chain on or delete it), its conversation in chat form (``input``: every message it
    answered, ``output``: its answer; a later turn's ``previous_response_id`` continues from the
    two without translating anything again) and the response object as sent. Rows past
    ``expires_at`` (``responses.retention``) are never served and are swept."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    caller: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()
    input: Mapped[list[Any]] = mapped_column(JSON())
    output: Mapped[list[Any]] = mapped_column(JSON())
    response: Mapped[dict[str, Any]] = mapped_column()
