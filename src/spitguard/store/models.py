"""Tables of the store (SQLAlchemy 2 typed declarative mapping).

Schema changes go through a new Alembic revision in migrations/versions/; a test checks
that the migrations produce exactly these tables. Timestamps of inventory rows are aware
UTC datetimes; binding times are float epochs because the location service compares them
with its injected clock on every request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so later migrations can alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

INVENTORY_REVISION_KEY = "inventory"


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware UTC datetime is required")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())

    # lazy="raise": under asyncio an implicit lazy load would fail obscurely; load explicitly.
    domains: Mapped[list[Domain]] = relationship(
        back_populates="tenant", order_by="Domain.name", lazy="raise"
    )

    def __repr__(self) -> str:
        return f"Tenant(id={self.id!r}, name={self.name!r})"


class Domain(Base):
    __tablename__ = "domains"
    __table_args__ = (CheckConstraint("name = lower(name)", name="name_lower_case"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)

    tenant: Mapped[Tenant] = relationship(back_populates="domains", lazy="raise")

    def __repr__(self) -> str:
        return f"Domain(id={self.id!r}, name={self.name!r}, tenant_id={self.tenant_id!r})"


class Line(Base):
    __tablename__ = "lines"
    __table_args__ = (UniqueConstraint("domain_id", "auth_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # The AOR's domain: auth users are unique per domain, as digest usernames are per realm.
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"))
    aor: Mapped[str] = mapped_column(String(320), unique=True)
    auth_user: Mapped[str] = mapped_column(String(128))
    password_enc: Mapped[bytes] = mapped_column(LargeBinary)
    display_name: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    def __repr__(self) -> str:  # password_enc left out on purpose
        return f"Line(id={self.id!r}, aor={self.aor!r}, auth_user={self.auth_user!r})"


class Binding(Base):
    """One registered contact of an AOR, with where and how it reached us."""

    __tablename__ = "bindings"
    __table_args__ = (UniqueConstraint("aor", "contact"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    aor: Mapped[str] = mapped_column(String(320), index=True)
    contact: Mapped[str] = mapped_column(String(2048))
    instance: Mapped[str | None] = mapped_column(String(256))
    reg_id: Mapped[int | None] = mapped_column(Integer)
    call_id: Mapped[str] = mapped_column(String(256))
    cseq: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[float] = mapped_column(Float)
    q: Mapped[float | None] = mapped_column(Float)
    path: Mapped[list[str]] = mapped_column(JSON)
    transport: Mapped[str] = mapped_column(String(8))
    local_host: Mapped[str] = mapped_column(String(64))
    local_port: Mapped[int] = mapped_column(Integer)
    remote_host: Mapped[str] = mapped_column(String(64))
    remote_port: Mapped[int] = mapped_column(Integer)
    conn_id: Mapped[int] = mapped_column(BigInteger)
    user_agent: Mapped[str | None] = mapped_column(Text)
    nat_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[float] = mapped_column(Float)

    def __repr__(self) -> str:
        return f"Binding(id={self.id!r}, aor={self.aor!r}, contact={self.contact!r})"


class Revision(Base):
    """Change counters; the "inventory" row is bumped by every tenant/domain/line write."""

    __tablename__ = "revision"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class BanRow(Base):
    """A banned source, persisted so bans survive restarts and CLI/API edits reach the edge.

    Times are float epochs: the edge compares them with its injected clock, like bindings.
    """

    __tablename__ = "bans"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    until: Mapped[float] = mapped_column(Float)
    level: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    manual: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[float] = mapped_column(Float)

    def __repr__(self) -> str:
        return f"BanRow(source={self.source!r}, until={self.until!r}, level={self.level!r})"


class SecurityEvent(Base):
    """Blocked traffic, aggregated: one row per (source, reason, epoch minute) with a count
    and one sampled (already redacted) trace, so the table grows with minutes, not packets."""

    __tablename__ = "security_events"
    __table_args__ = (
        UniqueConstraint("source", "reason", "minute"),
        Index(None, "minute"),
        Index(None, "reason", "minute"),
        Index(None, "source", "minute"),
    )

    # 64-bit on PostgreSQL; SQLite only auto-assigns ids to an INTEGER PRIMARY KEY.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    source: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(64))
    minute: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(8))
    transport: Mapped[str] = mapped_column(String(8))
    sample: Mapped[bytes] = mapped_column(LargeBinary)
    method: Mapped[str | None] = mapped_column(String(32))
    user_agent: Mapped[str | None] = mapped_column(String(200))
    target: Mapped[str | None] = mapped_column(String(200))

    def __repr__(self) -> str:  # the sample left out: it is untrusted bytes
        return (
            f"SecurityEvent(id={self.id!r}, source={self.source!r}, reason={self.reason!r}, "
            f"minute={self.minute!r}, count={self.count!r})"
        )


# --- boot server: devices, their lines, tenant hardening profiles, fetches, uploads --------


class Device(Base):
    """One desk phone, known by its MAC. Both passwords are sealed with the store's box."""

    __tablename__ = "devices"
    __table_args__ = (
        # 12 lower-case hex digits, the form phones request their files by; ltrim() with a
        # character set exists on SQLite and PostgreSQL alike, a regex does not.
        CheckConstraint(
            "length(mac) = 12 AND ltrim(mac, '0123456789abcdef') = ''", name="mac_lower_hex"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    mac: Mapped[str] = mapped_column(String(12), unique=True)
    vendor: Mapped[str] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(64))
    admin_password_enc: Mapped[bytes] = mapped_column(LargeBinary)
    # The phone's own HTTP-digest password for fetching its configuration.
    prov_password_enc: Mapped[bytes] = mapped_column(LargeBinary)
    overrides: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    def __repr__(self) -> str:  # sealed passwords left out on purpose
        return f"Device(id={self.id!r}, mac={self.mac!r}, vendor={self.vendor!r})"


class DeviceLine(Base):
    """Which line sits on which line key of a device. A line may appear on several devices."""

    __tablename__ = "device_lines"
    __table_args__ = (CheckConstraint("line_key >= 1 AND line_key <= 255", name="line_key_range"),)

    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    line_key: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id", ondelete="CASCADE"), index=True)

    def __repr__(self) -> str:
        return (
            f"DeviceLine(device_id={self.device_id!r}, line_key={self.line_key!r}, "
            f"line_id={self.line_id!r})"
        )


class TenantProfile(Base):
    """A tenant's hardening choices; a tenant without a row gets the strict defaults."""

    __tablename__ = "tenant_profiles"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    web_ui: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    invite_validation: Mapped[str] = mapped_column(
        String(8), default="source", server_default="source"
    )
    checksync_validation: Mapped[str] = mapped_column(
        String(8), default="digest", server_default="digest"
    )
    polling: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    resync_reboots: Mapped[bool | None] = mapped_column(Boolean)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    def __repr__(self) -> str:
        return f"TenantProfile(tenant_id={self.tenant_id!r}, web_ui={self.web_ui!r})"


class FetchLogRow(Base):
    """One provisioning request: who asked for which file and what they got.

    ``device_id`` is null for MACs we do not know (kept: scanners probe boot servers too);
    ``version`` is the SHA-256 of the body served. Times are float epochs like the guard's.
    """

    __tablename__ = "fetch_log"
    __table_args__ = (Index(None, "device_id", "at"), Index(None, "at"))

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id", ondelete="SET NULL"))
    mac_requested: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(512))
    status: Mapped[int] = mapped_column(Integer)
    version: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    firmware: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)
    note: Mapped[str | None] = mapped_column(String(200))  # e.g. a User-Agent mismatch

    def __repr__(self) -> str:
        return (
            f"FetchLogRow(id={self.id!r}, mac_requested={self.mac_requested!r}, "
            f"path={self.path!r}, status={self.status!r})"
        )


class DeviceUpload(Base):
    """A file a phone uploaded (logs, local overrides) with what it undoes of the hardening.

    ``size`` is the size received; ``body`` keeps at most a capped prefix of it.
    """

    __tablename__ = "device_uploads"
    __table_args__ = (Index(None, "device_id", "at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    weakening: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    at: Mapped[float] = mapped_column(Float)

    def __repr__(self) -> str:  # the body left out: it is untrusted bytes
        return (
            f"DeviceUpload(id={self.id!r}, device_id={self.device_id!r}, kind={self.kind!r}, "
            f"size={self.size!r})"
        )


# --- portal and API: admin users, their sessions and API tokens ----------------------------


class AdminUser(Base):
    """A person who uses the portal or API. `tenant_id` is set exactly for tenant admins."""

    __tablename__ = "admin_users"
    __table_args__ = (
        CheckConstraint("role IN ('operator', 'tenant_admin')", name="role_known"),
        CheckConstraint(
            "(role = 'operator' AND tenant_id IS NULL) OR "
            "(role = 'tenant_admin' AND tenant_id IS NOT NULL)",
            name="tenant_matches_role",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))  # argon2id, PHC string
    role: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    def __repr__(self) -> str:  # the hash left out on purpose
        return f"AdminUser(id={self.id!r}, username={self.username!r}, role={self.role!r})"


class AdminSession(Base):
    """A portal login. Only the SHA-256 of the cookie value is kept: a leaked database
    does not hand out live sessions."""

    __tablename__ = "admin_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("admin_users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)

    def __repr__(self) -> str:
        return f"AdminSession(user_id={self.user_id!r}, expires_at={self.expires_at!r})"


class ApiToken(Base):
    """A bearer token for scripts, acting as its user; only its SHA-256 is kept."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("admin_users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float)

    def __repr__(self) -> str:
        return f"ApiToken(id={self.id!r}, user_id={self.user_id!r}, name={self.name!r})"


class ResyncRequest(Base):
    """A re-sync asked for by the CLI or API (another process), done by the running edge.

    ``state``: ``queued`` → ``sent`` (NOTIFY on its way) → ``done`` with an ``outcome``.
    """

    __tablename__ = "resync_requests"
    __table_args__ = (Index(None, "state"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    mac: Mapped[str] = mapped_column(String(12))
    state: Mapped[str] = mapped_column(String(8))
    outcome: Mapped[str | None] = mapped_column(String(32))
    requested_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


# --- the auditor: runs and per-target results ------------------------------------------------


class AuditRun(Base):
    """One `spitguard audit` (or API-started audit): when, with which options, how it went."""

    __tablename__ = "audit_runs"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float] = mapped_column(Float)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    targets: Mapped[int] = mapped_column(Integer)
    exposed: Mapped[int] = mapped_column(Integer)

    def __repr__(self) -> str:
        return f"AuditRun(id={self.id!r}, targets={self.targets!r}, exposed={self.exposed!r})"


class AuditResultRow(Base):
    """What one audit found at one target. ``device_id`` and ``aor`` are set when the
    target was a registered phone's address, so the portal can show the latest result next
    to each device and registration; ``details`` holds status lines and findings, never a
    configuration's content."""

    __tablename__ = "audit_results"
    __table_args__ = (Index(None, "host", "at"), Index(None, "device_id", "at"))

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    run_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("audit_runs.id", ondelete="CASCADE"),
        index=True,
    )
    host: Mapped[str] = mapped_column(String(253))
    port: Mapped[int] = mapped_column(Integer)
    address: Mapped[str | None] = mapped_column(String(64))
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id", ondelete="SET NULL"))
    aor: Mapped[str | None] = mapped_column(String(320))
    verdict: Mapped[str] = mapped_column(String(8))
    exposed: Mapped[bool] = mapped_column(Boolean)
    web_ui: Mapped[bool] = mapped_column(Boolean)
    config: Mapped[bool] = mapped_column(Boolean)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[float] = mapped_column(Float)

    def __repr__(self) -> str:
        return (
            f"AuditResultRow(id={self.id!r}, host={self.host!r}, port={self.port!r}, "
            f"verdict={self.verdict!r})"
        )
