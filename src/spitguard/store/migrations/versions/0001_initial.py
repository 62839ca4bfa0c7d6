"""Initial schema: tenants, domains, lines, bindings and the revision counter.

Revision ID: 0001
Revises:
Create Date: 2024-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
    )
    op.create_table(
        "domains",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_domains"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_domains_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("name", name="uq_domains_name"),
        # op.f(): the name is final; the "ck" naming convention would prefix it again.
        sa.CheckConstraint("name = lower(name)", name=op.f("ck_domains_name_lower_case")),
    )
    op.create_index("ix_domains_tenant_id", "domains", ["tenant_id"])
    op.create_table(
        "lines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("aor", sa.String(320), nullable=False),
        sa.Column("auth_user", sa.String(128), nullable=False),
        sa.Column("password_enc", sa.LargeBinary(), nullable=False),
        sa.Column("display_name", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lines"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_lines_tenant_id_tenants", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name="fk_lines_domain_id_domains", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("aor", name="uq_lines_aor"),
        sa.UniqueConstraint("domain_id", "auth_user", name="uq_lines_domain_id_auth_user"),
    )
    op.create_index("ix_lines_tenant_id", "lines", ["tenant_id"])
    op.create_table(
        "bindings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("aor", sa.String(320), nullable=False),
        sa.Column("contact", sa.String(2048), nullable=False),
        sa.Column("instance", sa.String(256), nullable=True),
        sa.Column("reg_id", sa.Integer(), nullable=True),
        sa.Column("call_id", sa.String(256), nullable=False),
        sa.Column("cseq", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("q", sa.Float(), nullable=True),
        sa.Column("path", sa.JSON(), nullable=False),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("local_host", sa.String(64), nullable=False),
        sa.Column("local_port", sa.Integer(), nullable=False),
        sa.Column("remote_host", sa.String(64), nullable=False),
        sa.Column("remote_port", sa.Integer(), nullable=False),
        sa.Column("conn_id", sa.BigInteger(), nullable=False),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("nat_json", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bindings"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_bindings_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("aor", "contact", name="uq_bindings_aor_contact"),
    )
    op.create_index("ix_bindings_aor", "bindings", ["aor"])
    op.create_index("ix_bindings_tenant_id", "bindings", ["tenant_id"])
    revision_table = op.create_table(
        "revision",
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_revision"),
    )
    op.bulk_insert(revision_table, [{"key": "inventory", "value": 0}])


def downgrade() -> None:
    op.drop_table("revision")
    op.drop_index("ix_bindings_tenant_id", table_name="bindings")
    op.drop_index("ix_bindings_aor", table_name="bindings")
    op.drop_table("bindings")
    op.drop_index("ix_lines_tenant_id", table_name="lines")
    op.drop_table("lines")
    op.drop_index("ix_domains_tenant_id", table_name="domains")
    op.drop_table("domains")
    op.drop_table("tenants")
