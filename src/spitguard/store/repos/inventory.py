"""Tenants with their SIP domains, lines, and registration bindings."""

from __future__ import annotations

import builtins
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    delete,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from ...sip import SipParseError, SipUri, parse_uri
from ..errors import (
    AlreadyExistsError,
    InvalidInputError,
    UnknownLineError,
    UnknownTenantError,
)
from ..models import (
    Binding,
    Domain,
    Line,
    Tenant,
)
from ._sql import _bump_revision, _now, _rowcount

if TYPE_CHECKING:
    from ..db import Store


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
