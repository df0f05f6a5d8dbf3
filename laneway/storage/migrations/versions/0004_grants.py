"""Grants in the database: client keys may be admin, trusted (name a sub-caller), capped in
priority and barred from published lanes; publisher tokens may join declared models.

The server defaults are what rows created before this revision get, and grant nothing they could
not do before: not admin, not trusted, priority 0, published lanes allowed, no joining.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY_COLUMNS = (
    ("admin", sa.Boolean(), sa.false()),
    ("trusted", sa.Boolean(), sa.false()),
    ("max_priority", sa.Integer(), sa.text("0")),
    ("published_lanes", sa.Boolean(), sa.true()),
)


def upgrade() -> None:
    # ADD COLUMN with a constant default works in place on SQLite and PostgreSQL (no table rebuild).
    for name, type_, default in _KEY_COLUMNS:
        op.add_column("api_keys", sa.Column(name, type_, nullable=False, server_default=default))
    op.add_column(
        "publisher_tokens",
        sa.Column("join_declared", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("publisher_tokens", "join_declared")
    for name, _, _ in reversed(_KEY_COLUMNS):
        op.drop_column("api_keys", name)
