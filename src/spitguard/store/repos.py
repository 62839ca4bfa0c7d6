"""Async repositories: tenants with their SIP domains, lines, and registration bindings.

Every query is an SQLAlchemy expression (bound parameters only) that runs on SQLite and
PostgreSQL alike. Results are plain frozen values, never ORM objects, so callers cannot
trigger lazy loads outside a session. Every tenant/domain/line write bumps the inventory
revision in the same transaction.
"""

from __future__ import annotations

import builtins
import ipaddress
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Insert,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, selectinload
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.sql.elements import KeyedColumnElement

from ..sip import SipParseError, SipUri, parse_uri
from .errors import (
    AlreadyExistsError,
    InvalidInputError,
    StoreError,
    UnknownLineError,
    UnknownTenantError,
)
from .models import (
    INVENTORY_REVISION_KEY,
    BanRow,
    Binding,
    Domain,
    Line,
    Revision,
    SecurityEvent,
    Tenant,
)

if TYPE_CHECKING:
    from .db import Store

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 128

_TENANT_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
_DOMAIN_RE = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
# Digest usernames travel quoted in Authorization headers and land in phone config files.
_AUTH_USER_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]{1,128}")


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantInfo:
    id: int
    name: str
    domains: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LineInfo:
    """A line without its password."""

    id: int
    tenant: str
    aor: str
    auth_user: str
    domain: str
    display_name: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """A line with its plaintext password, for the registrar's in-memory directory."""

    tenant_id: int
    tenant: str
    aor: str
    auth_user: str
    domain: str
    display_name: str | None
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class BindingRecord:
    """One registered contact of an AOR (see models.Binding for the columns)."""

    tenant_id: int
    aor: str
    contact: str
    call_id: str
    cseq: int
    expires_at: float
    transport: str
    local_host: str
    local_port: int
    remote_host: str
    remote_port: int
    conn_id: int
    received_at: float
    instance: str | None = None
    reg_id: int | None = None
    q: float | None = None
    path: tuple[str, ...] = ()
    user_agent: str | None = None
    nat: dict[str, Any] = field(default_factory=dict)


# --- input normalisation (shared with the CLI and, later, the API) ------------------------


def normalize_tenant_name(name: str) -> str:
    value = name.strip().lower()
    if _TENANT_NAME_RE.fullmatch(value) is None:
        raise InvalidInputError(
            f"invalid tenant name {name!r}: use 1-64 lower-case letters, digits, '.', '_' "
            "or '-', starting and ending with a letter or digit"
        )
    return value


def normalize_domain(domain: str) -> str:
    """Lower-case host name (trailing dot dropped), IPv4 address or bracketed IPv6."""
    value = domain.strip().lower().rstrip(".")
    if value.startswith("[") and value.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(value[1:-1])}]"
        except ValueError:
            pass
    else:
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            if _DOMAIN_RE.fullmatch(value) is not None:
                return value
    raise InvalidInputError(
        f"invalid SIP domain {domain!r}: use a host name such as acme.example.com"
    )


@dataclass(frozen=True, slots=True)
class ParsedAor:
    aor: str  # canonical: "sip:user@domain"
    user: str
    domain: str


def parse_aor(text: str) -> ParsedAor:
    """`1001@acme.example.com`, `sip:1001@…` or `sips:1001@…` → the canonical AOR."""
    raw = text.strip()
    hint = "write it as user@domain, e.g. 1001@acme.example.com"
    if ":" not in raw.partition("@")[0]:
        raw = "sip:" + raw
    try:
        uri = parse_uri(raw)
    except SipParseError:
        raise InvalidInputError(f"invalid AOR {text!r}: {hint}") from None
    if not isinstance(uri, SipUri) or uri.user is None:
        raise InvalidInputError(f"invalid AOR {text!r}: {hint}")
    if uri.password is not None:
        # Do not echo the text: it holds a password.
        raise InvalidInputError(f"invalid AOR: it contains a password; {hint}")
    if uri.port is not None or uri.params or uri.headers is not None:
        raise InvalidInputError(f"invalid AOR {text!r}: no port or parameters; {hint}")
    user = uri.user_unescaped or ""
    if not user or not user.isprintable() or any(c.isspace() for c in user):
        raise InvalidInputError(f"invalid AOR {text!r}: {hint}")
    domain = normalize_domain(uri.host)
    return ParsedAor(aor=f"sip:{user}@{domain}", user=user, domain=domain)


def check_password(password: str) -> None:
    """Reject passwords a scanner would guess or a phone could not store. Never echoes it."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInputError(
            f"password too short: use at least {MIN_PASSWORD_LENGTH} characters "
            "(or let spitguard generate one)"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInputError(f"password too long: use at most {MAX_PASSWORD_LENGTH} characters")
    if not password.isprintable() or password != password.strip():
        raise InvalidInputError(
            "password contains control characters or leading/trailing spaces; choose another"
        )


def _check_auth_user(auth_user: str) -> str:
    if _AUTH_USER_RE.fullmatch(auth_user) is None:
        raise InvalidInputError(
            f"invalid auth user {auth_user!r}: use 1-128 letters, digits or . _ - ~ characters"
        )
    return auth_user


def _check_display_name(name: str | None) -> str | None:
    if name is None or not name.strip():
        return None
    value = name.strip()
    if len(value) > 128 or not value.isprintable():
        raise InvalidInputError("display name must be at most 128 printable characters")
    return value


async def _bump_revision(session: AsyncSession) -> None:
    # One atomic UPDATE: concurrent writers each add one, nobody reads-modifies-writes.
    await session.execute(
        update(Revision)
        .where(Revision.key == INVENTORY_REVISION_KEY)
        .values(value=Revision.value + 1)
    )


def _tenant_info(tenant: Tenant) -> TenantInfo:
    return TenantInfo(
        id=tenant.id,
        name=tenant.name,
        domains=tuple(d.name for d in tenant.domains),
        created_at=tenant.created_at,
    )


# --- tenants ------------------------------------------------------------------------------


class TenantRepo:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(self, name: str, domains: Sequence[str]) -> TenantInfo:
        """Create a tenant with one or more SIP domains (each belongs to one tenant only)."""
        name = normalize_tenant_name(name)
        names = list(dict.fromkeys(normalize_domain(d) for d in domains))
        if not names:
            raise InvalidInputError(f'tenant "{name}" needs at least one SIP domain')
        now = _now(self._store)
        async with self._store.write() as session:
            if await session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
                raise AlreadyExistsError(f'tenant "{name}" already exists')
            taken = (
                await session.execute(
                    select(Domain.name, Tenant.name)
                    .join(Tenant, Domain.tenant_id == Tenant.id)
                    .where(Domain.name.in_(names))
                    .order_by(Domain.name)
                )
            ).first()
            if taken is not None:
                raise AlreadyExistsError(
                    f'domain "{taken[0]}" already belongs to tenant "{taken[1]}"'
                )
            tenant = Tenant(name=name, created_at=now)
            session.add(tenant)
            await session.flush()
            session.add_all(Domain(tenant_id=tenant.id, name=n) for n in names)
            await _bump_revision(session)
        return TenantInfo(id=tenant.id, name=name, domains=tuple(sorted(names)), created_at=now)

    async def list(self) -> builtins.list[TenantInfo]:
        async with self._store.read() as session:
            rows = await session.scalars(
                select(Tenant).options(selectinload(Tenant.domains)).order_by(Tenant.name)
            )
            return [_tenant_info(t) for t in rows]

    async def get(self, name: str) -> TenantInfo | None:
        async with self._store.read() as session:
            tenant = await session.scalar(
                select(Tenant)
                .options(selectinload(Tenant.domains))
                .where(Tenant.name == name.strip().lower())
            )
            return None if tenant is None else _tenant_info(tenant)

    async def find_by_domain(self, domain: str) -> TenantInfo | None:
        """The tenant owning a SIP domain (case-insensitive), if any."""
        try:
            key = normalize_domain(domain)
        except InvalidInputError:
            return None
        async with self._store.read() as session:
            tenant = await session.scalar(
                select(Tenant)
                .options(selectinload(Tenant.domains))
                .join(Domain, Domain.tenant_id == Tenant.id)
                .where(Domain.name == key)
            )
            return None if tenant is None else _tenant_info(tenant)


# --- lines --------------------------------------------------------------------------------


def _line_info(line: Line, tenant: str, domain: str) -> LineInfo:
    return LineInfo(
        id=line.id,
        tenant=tenant,
        aor=line.aor,
        auth_user=line.auth_user,
        domain=domain,
        display_name=line.display_name,
        created_at=line.created_at,
        updated_at=line.updated_at,
    )


async def _fetch_lines(
    session: AsyncSession, *where: ColumnElement[bool], ordered: bool = False
) -> builtins.list[tuple[Line, str, str]]:
    """Lines matching `where`, each with its tenant's and its domain's name."""
    query = (
        select(Line, Tenant.name, Domain.name)
        .join(Tenant, Line.tenant_id == Tenant.id)
        .join(Domain, Line.domain_id == Domain.id)
        .where(*where)
    )
    if ordered:
        query = query.order_by(Tenant.name, Line.aor)
    result = await session.execute(query)
    return [(line, tenant, domain) for line, tenant, domain in result]


class LineRepo:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(
        self,
        aor: str,
        *,
        tenant: str,
        password: str,
        auth_user: str | None = None,
        display_name: str | None = None,
    ) -> LineInfo:
        """Add a line; its AOR's domain must be one of the tenant's domains."""
        parsed = parse_aor(aor)
        user = _check_auth_user(parsed.user if auth_user is None else auth_user.strip())
        display = _check_display_name(display_name)
        check_password(password)
        sealed = self._store.box.encrypt(password)
        tenant_name = tenant.strip().lower()
        now = _now(self._store)
        async with self._store.write() as session:
            owner = await session.scalar(
                select(Tenant)
                .options(selectinload(Tenant.domains))
                .where(Tenant.name == tenant_name)
            )
            if owner is None:
                raise UnknownTenantError(tenant_name)
            domain = next((d for d in owner.domains if d.name == parsed.domain), None)
            if domain is None:
                other = await session.scalar(
                    select(Tenant.name)
                    .join(Domain, Domain.tenant_id == Tenant.id)
                    .where(Domain.name == parsed.domain)
                )
                where = (
                    f'it belongs to tenant "{other}"'
                    if other is not None
                    else f"its domains are: {', '.join(d.name for d in owner.domains)}"
                )
                raise InvalidInputError(
                    f'domain "{parsed.domain}" is not a domain of tenant "{tenant_name}"; {where}'
                )
            if await session.scalar(select(Line.id).where(Line.aor == parsed.aor)) is not None:
                raise AlreadyExistsError(f'line "{parsed.aor}" already exists')
            clash = await session.scalar(
                select(Line.aor).where(Line.domain_id == domain.id, Line.auth_user == user)
            )
            if clash is not None:
                raise AlreadyExistsError(
                    f'auth user "{user}" is already used in domain "{domain.name}" '
                    f'(by line "{clash}"); choose another auth user'
                )
            line = Line(
                tenant_id=owner.id,
                domain_id=domain.id,
                aor=parsed.aor,
                auth_user=user,
                password_enc=sealed,
                display_name=display,
                created_at=now,
                updated_at=now,
            )
            session.add(line)
            await session.flush()
            await _bump_revision(session)
        return _line_info(line, tenant_name, domain.name)

    async def set_password(self, aor: str, password: str) -> LineInfo:
        parsed = parse_aor(aor)
        check_password(password)
        sealed = self._store.box.encrypt(password)
        async with self._store.write() as session:
            rows = await _fetch_lines(session, Line.aor == parsed.aor)
            if not rows:
                raise UnknownLineError(parsed.aor)
            line, tenant, domain = rows[0]
            line.password_enc = sealed
            line.updated_at = _now(self._store)
            await session.flush()
            await _bump_revision(session)
        return _line_info(line, tenant, domain)

    async def list(self, tenant: str | None = None) -> builtins.list[LineInfo]:
        """All lines (of one tenant when given), ordered by tenant then AOR."""
        where: builtins.list[ColumnElement[bool]] = []
        async with self._store.read() as session:
            if tenant is not None:
                name = tenant.strip().lower()
                if await session.scalar(select(Tenant.id).where(Tenant.name == name)) is None:
                    raise UnknownTenantError(name)
                where.append(Tenant.name == name)
            rows = await _fetch_lines(session, *where, ordered=True)
        return [_line_info(*row) for row in rows]

    async def get(self, aor: str) -> LineInfo | None:
        try:
            key = parse_aor(aor).aor
        except InvalidInputError:
            return None
        async with self._store.read() as session:
            rows = await _fetch_lines(session, Line.aor == key)
        return _line_info(*rows[0]) if rows else None

    async def get_by_auth(self, auth_user: str, domain: str) -> LineInfo | None:
        """The line a digest username authenticates in a domain (realm), if any."""
        try:
            key = normalize_domain(domain)
        except InvalidInputError:
            return None
        async with self._store.read() as session:
            rows = await _fetch_lines(session, Line.auth_user == auth_user, Domain.name == key)
        return _line_info(*rows[0]) if rows else None

    async def load_directory(self) -> builtins.list[DirectoryEntry]:
        """Every line with its decrypted password (for the registrar, kept in memory)."""
        async with self._store.read() as session:
            rows = await _fetch_lines(session, ordered=True)
        box = self._store.box
        return [
            DirectoryEntry(
                tenant_id=line.tenant_id,
                tenant=tenant,
                aor=line.aor,
                auth_user=line.auth_user,
                domain=domain,
                display_name=line.display_name,
                password=box.decrypt(line.password_enc),
            )
            for line, tenant, domain in rows
        ]


# --- bindings -----------------------------------------------------------------------------

_BINDING_KEY = ("aor", "contact")


def _binding_values(b: BindingRecord) -> dict[str, Any]:
    return {
        "tenant_id": b.tenant_id,
        "aor": b.aor,
        "contact": b.contact,
        "instance": b.instance,
        "reg_id": b.reg_id,
        "call_id": b.call_id,
        "cseq": b.cseq,
        "expires_at": b.expires_at,
        "q": b.q,
        "path": list(b.path),
        "transport": b.transport,
        "local_host": b.local_host,
        "local_port": b.local_port,
        "remote_host": b.remote_host,
        "remote_port": b.remote_port,
        "conn_id": b.conn_id,
        "user_agent": b.user_agent,
        "nat_json": dict(b.nat),
        "received_at": b.received_at,
    }


def _binding_record(row: Binding) -> BindingRecord:
    return BindingRecord(
        tenant_id=row.tenant_id,
        aor=row.aor,
        contact=row.contact,
        instance=row.instance,
        reg_id=row.reg_id,
        call_id=row.call_id,
        cseq=row.cseq,
        expires_at=row.expires_at,
        q=row.q,
        path=tuple(row.path),
        transport=row.transport,
        local_host=row.local_host,
        local_port=row.local_port,
        remote_host=row.remote_host,
        remote_port=row.remote_port,
        conn_id=row.conn_id,
        user_agent=row.user_agent,
        nat=dict(row.nat_json),
        received_at=row.received_at,
    )


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


class BindingRepo:
    """Registrations, persisted so a restart does not forget where phones are."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def upsert(self, binding: BindingRecord) -> None:
        """Insert, or replace the binding with the same (aor, contact)."""
        values = _binding_values(binding)
        changes = {k: v for k, v in values.items() if k not in _BINDING_KEY}
        async with self._store.write() as session:
            dialect = self._store.engine.dialect.name
            stmt: Insert | None = None
            if dialect == "sqlite":
                stmt = (
                    sqlite.insert(Binding)
                    .values(values)
                    .on_conflict_do_update(index_elements=list(_BINDING_KEY), set_=changes)
                )
            elif dialect == "postgresql":
                stmt = (
                    postgresql.insert(Binding)
                    .values(values)
                    .on_conflict_do_update(index_elements=list(_BINDING_KEY), set_=changes)
                )
            if stmt is not None:
                await session.execute(stmt)
                return
            # Other backends: look up then write, inside the same transaction.
            result = await session.execute(
                update(Binding)
                .where(Binding.aor == binding.aor, Binding.contact == binding.contact)
                .values(changes)
            )
            if _rowcount(result) == 0:
                session.add(Binding(**values))

    async def delete(self, aor: str, contact: str) -> bool:
        async with self._store.write() as session:
            result = await session.execute(
                delete(Binding).where(Binding.aor == aor, Binding.contact == contact)
            )
        return _rowcount(result) > 0

    async def delete_for_aor(self, aor: str) -> int:
        async with self._store.write() as session:
            result = await session.execute(delete(Binding).where(Binding.aor == aor))
        return _rowcount(result)

    async def load_all(self) -> builtins.list[BindingRecord]:
        async with self._store.read() as session:
            rows = await session.scalars(select(Binding).order_by(Binding.aor, Binding.id))
            return [_binding_record(r) for r in rows]

    async def purge_expired(self, now: float) -> int:
        """Delete bindings whose expiry is at or before `now`; returns how many."""
        async with self._store.write() as session:
            result = await session.execute(delete(Binding).where(Binding.expires_at <= now))
        return _rowcount(result)


def _now(store: Store) -> datetime:
    return datetime.fromtimestamp(store.clock(), UTC)


# --- guard state: bans and security events ------------------------------------------------
#
# Both tables are written with one INSERT ... ON CONFLICT DO UPDATE per row set, which
# SQLite (3.24+) and PostgreSQL share; other backends are refused with a clear error.

BANS_REVISION_KEY = "bans"
MAX_BAN_REASON = 64
MAX_SOURCE = 64
_EVENT_KEY = ("source", "reason", "minute")
# Rows per multi-row INSERT: 13 columns x 500 stays below the bound-parameter limits of
# SQLite (32766) and PostgreSQL (32767).
_EVENT_CHUNK = 500
_EVENT_CLIPS = {"reason": 64, "action": 8, "transport": 8, "method": 32}


class BanLike(Protocol):
    """Anything with the fields of `guard.bans.Ban` (read-only, so frozen values match)."""

    @property
    def source(self) -> str: ...
    @property
    def until(self) -> float: ...
    @property
    def level(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def manual(self) -> bool: ...


class EventLike(Protocol):
    """Anything with the fields of `guard.events.EventRecord`; the sample already redacted."""

    @property
    def source(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def minute(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def first_seen(self) -> float: ...
    @property
    def last_seen(self) -> float: ...
    @property
    def action(self) -> str: ...
    @property
    def transport(self) -> str: ...
    @property
    def sample(self) -> bytes: ...
    @property
    def method(self) -> str | None: ...
    @property
    def user_agent(self) -> str | None: ...
    @property
    def target(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class BanInfo:
    """A stored ban; times are float epochs."""

    source: str
    until: float
    level: int
    reason: str
    created_at: float
    manual: bool
    updated_at: float

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)


@dataclass(frozen=True, slots=True)
class EventInfo:
    """One aggregated security event: `count` requests from `source` failing `reason` in
    epoch minute `minute`, with the (redacted) trace of one of them as `sample`."""

    id: int
    source: str
    reason: str
    minute: int
    count: int
    first_seen: float
    last_seen: float
    action: str
    transport: str
    sample: bytes = field(repr=False)
    method: str | None
    user_agent: str | None
    target: str | None


def normalize_ip(text: str) -> str:
    """The canonical text of one IPv4 or IPv6 address (as the edge writes ban sources)."""
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidInputError(
            f"invalid IP address {text!r}: give one IPv4 or IPv6 address, e.g. 192.0.2.10 "
            "(no port, no prefix length)"
        ) from None


def _check_ban_reason(reason: str) -> str:
    value = reason.strip()
    if not value or len(value) > MAX_BAN_REASON or not value.isprintable():
        raise InvalidInputError(f"invalid ban reason: use 1-{MAX_BAN_REASON} printable characters")
    return value


def _clip(text: str | None, length: int) -> str | None:
    return None if text is None else text[:length]


async def _bump_revision_key(session: AsyncSession, key: str) -> None:
    await session.execute(
        update(Revision).where(Revision.key == key).values(value=Revision.value + 1)
    )


def _upsert_insert(store: Store, model: type[Any]) -> sqlite.Insert | postgresql.Insert:
    dialect = store.engine.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(model)
    if dialect == "postgresql":
        return postgresql.insert(model)
    raise StoreError(
        f"bans and security events need SQLite or PostgreSQL; database_url uses {dialect}"
    )


def _ban_info(row: BanRow) -> BanInfo:
    return BanInfo(
        source=row.source,
        until=row.until,
        level=row.level,
        reason=row.reason,
        created_at=row.created_at,
        manual=row.manual,
        updated_at=row.updated_at,
    )


class BanRepo:
    """Bans, persisted so they survive restarts. Manual changes (CLI, API) bump the "bans"
    revision, which a running edge polls to reload; its own automatic bans do not."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def upsert(self, ban: BanLike, *, manual_change: bool = False) -> BanInfo:
        """Insert, or replace the ban of the same source."""
        if not ban.source or len(ban.source) > MAX_SOURCE:
            raise InvalidInputError(f"invalid ban source {ban.source[:80]!r}")
        info = BanInfo(
            source=ban.source,
            until=float(ban.until),
            level=int(ban.level),
            reason=ban.reason[:MAX_BAN_REASON],
            created_at=float(ban.created_at),
            manual=bool(ban.manual),
            updated_at=self._store.clock(),
        )
        values = {name: getattr(info, name) for name in BanInfo.__slots__}
        changes = {k: v for k, v in values.items() if k != "source"}
        async with self._store.write() as session:
            stmt = _upsert_insert(self._store, BanRow).values(values)
            await session.execute(
                stmt.on_conflict_do_update(index_elements=["source"], set_=changes)
            )
            if manual_change:
                await _bump_revision_key(session, BANS_REVISION_KEY)
        return info

    async def add_manual(self, source: str, *, duration: float, reason: str = "manual") -> BanInfo:
        """Ban an address for `duration` seconds from now on behalf of a person."""
        if not (0 < duration < float("inf")):
            raise InvalidInputError("ban duration must be a positive number of seconds")
        now = self._store.clock()
        ban = BanInfo(
            source=normalize_ip(source),
            until=now + duration,
            level=1,
            reason=_check_ban_reason(reason),
            created_at=now,
            manual=True,
            updated_at=now,
        )
        return await self.upsert(ban, manual_change=True)

    async def delete(self, source: str, *, manual_change: bool = False) -> bool:
        """Lift a ban; False when there was none (then nothing is bumped)."""
        async with self._store.write() as session:
            result = await session.execute(delete(BanRow).where(BanRow.source == source))
            removed = _rowcount(result) > 0
            if removed and manual_change:
                await _bump_revision_key(session, BANS_REVISION_KEY)
        return removed

    async def remove_manual(self, source: str) -> bool:
        return await self.delete(normalize_ip(source), manual_change=True)

    async def get(self, source: str) -> BanInfo | None:
        async with self._store.read() as session:
            row = await session.get(BanRow, source)
            return None if row is None else _ban_info(row)

    async def load_active(self, now: float) -> builtins.list[BanInfo]:
        """Bans still in force at `now`, for the edge's in-memory ban list."""
        return await self.list(now)

    async def list(self, now: float, include_expired: bool = False) -> builtins.list[BanInfo]:
        query = select(BanRow).order_by(BanRow.source)
        if not include_expired:
            query = query.where(BanRow.until > now)
        async with self._store.read() as session:
            return [_ban_info(row) for row in await session.scalars(query)]

    async def purge_expired(self, now: float) -> int:
        async with self._store.write() as session:
            result = await session.execute(delete(BanRow).where(BanRow.until <= now))
        return _rowcount(result)


def _event_values(rec: EventLike) -> dict[str, Any]:
    # Clipped to the column sizes: PostgreSQL would refuse the whole batch over one long
    # method from a scanner. Sources are IP addresses and fit.
    values: dict[str, Any] = {
        "source": rec.source[:MAX_SOURCE],
        "minute": int(rec.minute),
        "count": int(rec.count),
        "first_seen": float(rec.first_seen),
        "last_seen": float(rec.last_seen),
        "sample": bytes(rec.sample),
        "user_agent": _clip(rec.user_agent, 200),
        "target": _clip(rec.target, 200),
    }
    for name, length in _EVENT_CLIPS.items():
        values[name] = _clip(getattr(rec, name), length)
    return values


def _merge_into(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Fold `other` into `into` (same key) the way the database merges rows."""
    into["count"] += other["count"]
    into["first_seen"] = min(into["first_seen"], other["first_seen"])
    into["last_seen"] = max(into["last_seen"], other["last_seen"])
    if other["action"] == "ban":
        into["action"] = "ban"
    if not into["sample"]:
        into["sample"] = other["sample"]
    for name in ("method", "user_agent", "target"):
        if into[name] is None:
            into[name] = other[name]


def _event_merge_set(
    excluded: ReadOnlyColumnCollection[str, KeyedColumnElement[Any]],
) -> dict[str, Any]:
    """SET clause of the upsert: merges the incoming (excluded) row into the stored one."""
    e = SecurityEvent

    def new(name: str) -> KeyedColumnElement[Any]:
        return excluded[name]

    return {
        "count": e.count + new("count"),
        "first_seen": case(
            (new("first_seen") < e.first_seen, new("first_seen")), else_=e.first_seen
        ),
        "last_seen": case((new("last_seen") > e.last_seen, new("last_seen")), else_=e.last_seen),
        "action": case(
            (or_(e.action == "ban", new("action") == "ban"), literal("ban")), else_=e.action
        ),
        # The first sample stays: it shows how the burst began.
        "sample": case((func.length(e.sample) == 0, new("sample")), else_=e.sample),
        "method": func.coalesce(e.method, new("method")),
        "user_agent": func.coalesce(e.user_agent, new("user_agent")),
        "target": func.coalesce(e.target, new("target")),
    }


def _event_info(row: SecurityEvent) -> EventInfo:
    return EventInfo(
        id=row.id,
        source=row.source,
        reason=row.reason,
        minute=row.minute,
        count=row.count,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        action=row.action,
        transport=row.transport,
        sample=row.sample,
        method=row.method,
        user_agent=row.user_agent,
        target=row.target,
    )


def _event_filters(
    *,
    since: float | None = None,
    until: float | None = None,
    reason: str | None = None,
    source: str | None = None,
) -> builtins.list[ColumnElement[bool]]:
    e = SecurityEvent
    where: builtins.list[ColumnElement[bool]] = []
    if since is not None:
        # Every time of a row lies in its minute: the minute bound lets the index narrow
        # the scan, the last_seen bound makes it exact.
        where += [e.minute >= math.floor(since / 60), e.last_seen >= since]
    if until is not None:
        where += [e.minute <= math.floor(until / 60), e.last_seen < until]
    if reason is not None:
        where.append(e.reason == reason)
    if source is not None:
        where.append(e.source == source)
    return where


def _check_page(limit: int, offset: int = 0) -> None:
    if limit < 1 or offset < 0:
        raise InvalidInputError("limit must be at least 1 and offset at least 0")


class EventRepo:
    """Security events, aggregated per (source, reason, minute): the edge hands over batches
    of records; rows for a key it has written before are merged, never duplicated."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def add_batch(self, records: Iterable[EventLike]) -> int:
        """Merge records into the table in one transaction; returns how many rows (keys)
        were written. Counts add up, first/last seen widen, "ban" wins over other actions,
        and a stored sample is kept."""
        merged: dict[tuple[str, str, int], dict[str, Any]] = {}
        for rec in records:
            values = _event_values(rec)
            key = (values["source"], values["reason"], values["minute"])
            if key in merged:
                _merge_into(merged[key], values)
            else:
                merged[key] = values
        # Keys in sorted order, so concurrent writers (several edge nodes) lock rows in the
        # same order on PostgreSQL instead of deadlocking. Also required there: one INSERT
        # ... ON CONFLICT must not touch a key twice, hence the merging above.
        rows = [merged[key] for key in sorted(merged)]
        if not rows:
            return 0
        async with self._store.write() as session:
            for start in range(0, len(rows), _EVENT_CHUNK):
                stmt = _upsert_insert(self._store, SecurityEvent).values(
                    rows[start : start + _EVENT_CHUNK]
                )
                stmt = stmt.on_conflict_do_update(
                    index_elements=list(_EVENT_KEY), set_=_event_merge_set(stmt.excluded)
                )
                await session.execute(stmt)
        return len(rows)

    async def get(self, event_id: int) -> EventInfo | None:
        async with self._store.read() as session:
            row = await session.get(SecurityEvent, event_id)
            return None if row is None else _event_info(row)

    async def tail(
        self,
        limit: int = 50,
        after_id: int | None = None,
        reason: str | None = None,
        source: str | None = None,
    ) -> builtins.list[EventInfo]:
        """In id (arrival) order, newest last: the last `limit` rows, or with `after_id`
        the first `limit` rows after it, so a follower pages forward without gaps."""
        _check_page(limit)
        e = SecurityEvent
        query = select(e).where(*_event_filters(reason=reason, source=source))
        if after_id is None:
            query = query.order_by(e.id.desc()).limit(limit)
        else:
            query = query.where(e.id > after_id).order_by(e.id).limit(limit)
        async with self._store.read() as session:
            rows = [_event_info(row) for row in await session.scalars(query)]
        return rows if after_id is not None else rows[::-1]

    async def query(
        self,
        since: float | None = None,
        until: float | None = None,
        reason: str | None = None,
        source: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[EventInfo]:
        """Rows last seen in [since, until), newest (by last_seen) first, one page."""
        _check_page(limit, offset)
        e = SecurityEvent
        where = _event_filters(since=since, until=until, reason=reason, source=source)
        query = (
            select(e)
            .where(*where)
            .order_by(e.last_seen.desc(), e.id.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._store.read() as session:
            return [_event_info(row) for row in await session.scalars(query)]

    async def by_reason(self, since: float) -> builtins.list[tuple[str, int]]:
        """(reason, requests) since `since`, most first."""
        return await self._totals(SecurityEvent.reason, since)

    async def by_source(self, since: float, limit: int = 10) -> builtins.list[tuple[str, int]]:
        """The `limit` loudest sources since `since`: (source, requests), most first."""
        _check_page(limit)
        return await self._totals(SecurityEvent.source, since, limit)

    async def by_hour(self, since: float) -> builtins.list[tuple[int, int]]:
        """(hour start as epoch seconds, requests) for each hour with events, oldest first."""
        e = SecurityEvent
        hour = (e.minute // 60).label("hour")
        query = (
            select(hour, func.sum(e.count))
            .where(*_event_filters(since=since))
            .group_by(hour)
            .order_by(hour)
        )
        async with self._store.read() as session:
            result = await session.execute(query)
            return [(int(h) * 3600, int(n)) for h, n in result]

    async def _totals(
        self, column: InstrumentedAttribute[str], since: float, limit: int | None = None
    ) -> builtins.list[tuple[str, int]]:
        total = func.sum(SecurityEvent.count).label("total")
        query = (
            select(column, total)
            .where(*_event_filters(since=since))
            .group_by(column)
            .order_by(total.desc(), column)
            .limit(limit)
        )
        async with self._store.read() as session:
            result = await session.execute(query)
            return [(str(key), int(n)) for key, n in result]

    async def purge_before(self, ts: float) -> int:
        """Retention: delete rows last seen before `ts`; returns how many."""
        e = SecurityEvent
        async with self._store.write() as session:
            result = await session.execute(
                delete(e).where(e.minute <= math.floor(ts / 60), e.last_seen < ts)
            )
        return _rowcount(result)

    async def size_estimate(self) -> int:
        """Rows in the table (for retention metrics and the portal)."""
        async with self._store.read() as session:
            return int(await session.scalar(select(func.count()).select_from(SecurityEvent)) or 0)
