"""Guard state: bans, aggregated security events, and the "bans" revision counter.

Revision ID: 0002
Revises: 0001
Create Date: 2024-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# The change counter the edge polls to notice ban edits made by the CLI or the API.
_revision = sa.table(
    "revision", sa.column("key", sa.String(32)), sa.column("value", sa.BigInteger())
)


def upgrade() -> None:
    op.create_table(
        "bans",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("until", sa.Float(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("manual", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("source", name="pk_bans"),
    )
    op.create_table(
        "security_events",
        # 64-bit on PostgreSQL; SQLite only auto-assigns ids to an INTEGER PRIMARY KEY.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("sample", sa.LargeBinary(), nullable=False),
        sa.Column("method", sa.String(32), nullable=True),
        sa.Column("user_agent", sa.String(200), nullable=True),
        sa.Column("target", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_security_events"),
        sa.UniqueConstraint(
            "source", "reason", "minute", name="uq_security_events_source_reason_minute"
        ),
    )
    op.create_index("ix_security_events_minute", "security_events", ["minute"])
    op.create_index("ix_security_events_reason_minute", "security_events", ["reason", "minute"])
    op.create_index("ix_security_events_source_minute", "security_events", ["source", "minute"])
    op.bulk_insert(_revision, [{"key": "bans", "value": 0}])


def downgrade() -> None:
    op.execute(_revision.delete().where(_revision.c.key == "bans"))
    op.drop_index("ix_security_events_source_minute", table_name="security_events")
    op.drop_index("ix_security_events_reason_minute", table_name="security_events")
    op.drop_index("ix_security_events_minute", table_name="security_events")
    op.drop_table("security_events")
    op.drop_table("bans")
