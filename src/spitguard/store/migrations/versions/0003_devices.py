"""Boot server: devices and their lines, tenant hardening profiles, fetch log, uploads.

Revision ID: 0003
Revises: 0002
Create Date: 2024-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

# 64-bit on PostgreSQL; SQLite only auto-assigns ids to an INTEGER PRIMARY KEY.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(12), nullable=False),
        sa.Column("vendor", sa.String(32), nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("admin_password_enc", sa.LargeBinary(), nullable=False),
        sa.Column("prov_password_enc", sa.LargeBinary(), nullable=False),
        sa.Column("overrides", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_devices_tenant_id_tenants", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("mac", name="uq_devices_mac"),
        # op.f(): the name is final; the "ck" naming convention would prefix it again.
        sa.CheckConstraint(
            "length(mac) = 12 AND ltrim(mac, '0123456789abcdef') = ''",
            name=op.f("ck_devices_mac_lower_hex"),
        ),
    )
    op.create_index("ix_devices_tenant_id", "devices", ["tenant_id"])
    op.create_table(
        "device_lines",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("line_key", sa.Integer(), nullable=False),
        sa.Column("line_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "line_key", name="pk_device_lines"),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_device_lines_device_id_devices",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["line_id"], ["lines.id"], name="fk_device_lines_line_id_lines", ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "line_key >= 1 AND line_key <= 255", name=op.f("ck_device_lines_line_key_range")
        ),
    )
    op.create_index("ix_device_lines_line_id", "device_lines", ["line_id"])
    op.create_table(
        "tenant_profiles",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("web_ui", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("invite_validation", sa.String(8), server_default="source", nullable=False),
        sa.Column("checksync_validation", sa.String(8), server_default="digest", nullable=False),
        sa.Column("polling", sa.JSON(), nullable=True),
        sa.Column("resync_reboots", sa.Boolean(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenant_profiles"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_tenant_profiles_tenant_id_tenants",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "fetch_log",
        sa.Column("id", _BIG_ID, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=True),
        sa.Column("mac_requested", sa.String(64), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(256), nullable=True),
        sa.Column("firmware", sa.String(64), nullable=True),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fetch_log"),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_fetch_log_device_id_devices",
            ondelete="SET NULL",
        ),
    )
    op.create_index("ix_fetch_log_device_id_at", "fetch_log", ["device_id", "at"])
    op.create_index("ix_fetch_log_at", "fetch_log", ["at"])
    op.create_table(
        "device_uploads",
        sa.Column("id", _BIG_ID, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("weakening", sa.JSON(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_device_uploads"),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_device_uploads_device_id_devices",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_device_uploads_device_id_at", "device_uploads", ["device_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_device_uploads_device_id_at", table_name="device_uploads")
    op.drop_table("device_uploads")
    op.drop_index("ix_fetch_log_at", table_name="fetch_log")
    op.drop_index("ix_fetch_log_device_id_at", table_name="fetch_log")
    op.drop_table("fetch_log")
    op.drop_table("tenant_profiles")
    op.drop_index("ix_device_lines_line_id", table_name="device_lines")
    op.drop_table("device_lines")
    op.drop_index("ix_devices_tenant_id", table_name="devices")
    op.drop_table("devices")
