"""Failover records in the database (every replica's, kept for ``routing.failover_retention``),
and the replica that served each usage record.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "failover_records",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replica", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=False),
        sa.Column("run_id", sa.String(255), nullable=True),
        sa.Column("caller", sa.String(255), nullable=False),
        sa.Column("requested", sa.String(255), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("served_by", sa.String(255), nullable=True),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.Column("prompt", sa.JSON(none_as_null=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failover_records")),
    )
    op.create_index("ix_failover_records_started_at", "failover_records", ["started_at"])
    # Rows written before this revision were served by an unknown replica: ''.
    op.add_column("usage_records", sa.Column("replica", sa.String(255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:  # SQLite rebuilds the table to drop a column
        batch.drop_column("replica")
    op.drop_index("ix_failover_records_started_at", table_name="failover_records")
    op.drop_table("failover_records")
