"""Publisher tokens issued from the database (beside the config file's), kept as hashes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "publisher_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("token_hash", sa.String(71), nullable=False),
        sa.Column("prefix", sa.String(12), nullable=False),
        sa.Column("names", sa.JSON(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_publisher_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_publisher_tokens_token_hash")),
    )
    op.create_index(
        "uq_publisher_tokens_active_name",
        "publisher_tokens",
        ["name"],
        unique=True,
        sqlite_where=sa.text("revoked_at IS NULL"),
        postgresql_where=sa.text("revoked_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_publisher_tokens_active_name", table_name="publisher_tokens")
    op.drop_table("publisher_tokens")
