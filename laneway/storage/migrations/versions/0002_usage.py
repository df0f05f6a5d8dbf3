"""Usage records: one row per served request, written in batches off the request path.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_records",
        # BIGINT on PostgreSQL; on SQLite only "INTEGER PRIMARY KEY" is the autoincrementing rowid.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("caller", sa.String(255), nullable=False),
        sa.Column("requested", sa.String(255), nullable=False),
        sa.Column("lane", sa.String(255), nullable=False),
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(255), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
    )
    op.create_index("ix_usage_records_at", "usage_records", ["at"])
    op.create_index("ix_usage_records_caller_at", "usage_records", ["caller", "at"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_caller_at", table_name="usage_records")
    op.drop_index("ix_usage_records_at", table_name="usage_records")
    op.drop_table("usage_records")
