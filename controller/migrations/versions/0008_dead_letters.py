"""dead letters: stream entries ingest could not store, with the reason

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 08:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(length=128), nullable=False),
        sa.Column("entry_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dead_letters_host_id", "dead_letters", ["host", "id"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_host_id", table_name="dead_letters")
    op.drop_table("dead_letters")
