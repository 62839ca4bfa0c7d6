"""Auditor: audit runs and per-target results.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

# 64-bit on PostgreSQL; SQLite only auto-assigns ids to an INTEGER PRIMARY KEY.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_runs",
        sa.Column("id", _BIG_ID, nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("targets", sa.Integer(), nullable=False),
        sa.Column("exposed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_runs"),
    )
    op.create_table(
        "audit_results",
        sa.Column("id", _BIG_ID, nullable=False),
        sa.Column("run_id", _BIG_ID, nullable=False),
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("device_id", sa.Integer(), nullable=True),
        sa.Column("aor", sa.String(320), nullable=True),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("exposed", sa.Boolean(), nullable=False),
        sa.Column("web_ui", sa.Boolean(), nullable=False),
        sa.Column("config", sa.Boolean(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_results"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["audit_runs.id"],
            name="fk_audit_results_run_id_audit_runs",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_audit_results_device_id_devices",
            ondelete="SET NULL",
        ),
    )
    op.create_index("ix_audit_results_run_id", "audit_results", ["run_id"])
    op.create_index("ix_audit_results_host_at", "audit_results", ["host", "at"])
    op.create_index("ix_audit_results_device_id_at", "audit_results", ["device_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_audit_results_device_id_at", table_name="audit_results")
    op.drop_index("ix_audit_results_host_at", table_name="audit_results")
    op.drop_index("ix_audit_results_run_id", table_name="audit_results")
    op.drop_table("audit_results")
    op.drop_table("audit_runs")
