"""Boot server, part 2: queued re-sync requests, and a note on fetches (User-Agent mismatch).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("fetch_log") as batch:
        batch.add_column(sa.Column("note", sa.String(200), nullable=True))
    op.create_table(
        "resync_requests",
        sa.Column("id", _BIG_ID, nullable=False),
        sa.Column("mac", sa.String(12), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("requested_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_resync_requests"),
    )
    op.create_index("ix_resync_requests_state", "resync_requests", ["state"])


def downgrade() -> None:
    op.drop_index("ix_resync_requests_state", table_name="resync_requests")
    op.drop_table("resync_requests")
    with op.batch_alter_table("fetch_log") as batch:
        batch.drop_column("note")
