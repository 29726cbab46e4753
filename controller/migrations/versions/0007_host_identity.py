"""hosts: each host's own Redis identity (the SHA-256 of its secret, never the secret)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 05:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("agent_secret_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("agent_secret_sha256")
