"""ssh bootstrap: hosts' SSH fields, bootstrap batches, runs and steps

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 10:00:00
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
    # Server defaults fill the rows that exist already (hosts registered before this).
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("ssh_user", sa.String(length=32), server_default="root", nullable=False)
        )
        batch_op.add_column(
            sa.Column("ssh_port", sa.Integer(), server_default="22", nullable=False)
        )
        batch_op.add_column(sa.Column("host_key_fingerprint", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("trust_on_first_use", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("host_key_rejected", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("cgroup", sa.String(length=255), nullable=True))

    op.create_table(
        "bootstrap_batches",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("parallel", sa.Integer(), nullable=False),
        sa.Column("max_failures", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )

    op.create_table(
        "bootstrap_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("host_name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("agent_version", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["bootstrap_batches.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("bootstrap_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bootstrap_runs_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_bootstrap_runs_state"), ["state"], unique=False)
        batch_op.create_index(
            "ix_bootstrap_runs_host_created", ["host_name", "created_at"], unique=False
        )

    op.create_table(
        "bootstrap_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=True),
        sa.Column("output", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["bootstrap_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("bootstrap_steps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bootstrap_steps_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("bootstrap_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bootstrap_steps_run_id"))
    op.drop_table("bootstrap_steps")

    with op.batch_alter_table("bootstrap_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_bootstrap_runs_host_created")
        batch_op.drop_index(batch_op.f("ix_bootstrap_runs_state"))
        batch_op.drop_index(batch_op.f("ix_bootstrap_runs_batch_id"))
    op.drop_table("bootstrap_runs")
    op.drop_table("bootstrap_batches")

    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("cgroup")
        batch_op.drop_column("host_key_rejected")
        batch_op.drop_column("trust_on_first_use")
        batch_op.drop_column("host_key_fingerprint")
        batch_op.drop_column("ssh_port")
        batch_op.drop_column("ssh_user")
