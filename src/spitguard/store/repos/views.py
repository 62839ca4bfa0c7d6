"""Paged, tenant-scoped reads for the portal and the API.

Every query takes a `scope`: None for operators (all tenants) or one tenant id for a
tenant admin, applied in SQL, so a row of another tenant is never loaded, let alone shown.
Paging and filtering happen in the database: tables hold tens of thousands of rows.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from ...provision.inventory import compliance
from ...provision.profile import InvalidDeviceConfig, normalize_mac
from ..models import Binding, Device, Domain, FetchLogRow, Line, Tenant
from ._sql import _check_page
from .devices import DeviceInfo, _device_infos
from .fetches import FetchInfo, _fetch_info
from .inventory import BindingRecord, LineInfo, TenantInfo, _binding_record, _line_info

if TYPE_CHECKING:
    from ..db import Store

Scope = int | None  # None: every tenant (operator); an id: that tenant only
Compliance = Literal["compliant", "stale", "never", "invalid"]
COMPLIANCE_STATES: tuple[Compliance, ...] = ("compliant", "stale", "never", "invalid")
COMPLIANCE_TEXT: dict[Compliance, str] = {
    "compliant": "runs its current configuration",
    "stale": "runs an old configuration",
    "never": "never fetched its configuration",
    "invalid": "its configuration cannot be rendered",
}
DesiredFiles = Mapping[str, tuple[str, str]]
"""MAC → (file name, version) of the hardened file each device should run now, as the boot
server renders it (``provision.Catalog.desired_files``); a device missing from it cannot be
rendered ("invalid")."""
EXPOSED_VERDICT = "directly reachable from the Internet"  # proxy.nat.EXPOSED
MAX_PAGE = 500
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True, slots=True)
class Registration:
    id: int
    tenant: str
    binding: BindingRecord


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """A device with its latest request and its compliance: the version of its latest
    successful fetch of its hardened file against the version it should run now (the same
    truth as ``provision.inventory.assess`` and `spitguard device compliance`)."""

    device: DeviceInfo
    last_fetch: FetchInfo | None
    compliance: Compliance

    @property
    def compliant(self) -> bool:
        return self.compliance == "compliant"


def normalize_mac_or_none(mac: str) -> str | None:
    try:
        return normalize_mac(mac)
    except InvalidDeviceConfig:
        return None


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


def _contains(column: Any, text: str) -> ColumnElement[bool]:
    return func.lower(column).like(_like(text), escape="\\")


async def _count(session: AsyncSession, query: Any) -> int:
    return int(await session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def _file_name(path: str) -> str:
    """Fetches are compared by file name, like ``FetchLogRepo.last_success(path=...)``."""
    return path.rsplit("/", 1)[-1].lower()


class ViewRepo:
    """Read-only, paged views across the inventory, registrations and the fetch log."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def tenant_id(self, scope: Scope, name: str) -> int | None:
        """The id of a tenant visible in `scope`; None when it does not exist or is not
        visible (the same answer, so a tenant admin learns nothing of other tenants)."""
        query = select(Tenant.id).where(Tenant.name == name.strip().lower())
        if scope is not None:
            query = query.where(Tenant.id == scope)
        async with self._store.read() as session:
            return await session.scalar(query)

    async def tenants(
        self, scope: Scope, *, q: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[TenantInfo]:
        _check_page(limit, offset)
        query = select(Tenant.id)
        if scope is not None:
            query = query.where(Tenant.id == scope)
        if q:
            query = query.where(_contains(Tenant.name, q))
        async with self._store.read() as session:
            total = await _count(session, query)
            ids = list(
                await session.scalars(query.order_by(Tenant.name).limit(limit).offset(offset))
            )
            tenants = {
                t.id: t for t in await session.scalars(select(Tenant).where(Tenant.id.in_(ids)))
            }
            domains: dict[int, list[str]] = {}
            for tid, name in await session.execute(
                select(Domain.tenant_id, Domain.name)
                .where(Domain.tenant_id.in_(ids))
                .order_by(Domain.name)
            ):
                domains.setdefault(tid, []).append(name)
        items = tuple(
            TenantInfo(i, tenants[i].name, tuple(domains.get(i, ())), tenants[i].created_at)
            for i in ids
        )
        return Page(items, total, limit, offset)

    async def lines(
        self,
        scope: Scope,
        *,
        tenant_id: int | None = None,
        q: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[LineInfo]:
        _check_page(limit, offset)
        query = (
            select(Line, Tenant.name, Domain.name)
            .join(Tenant, Line.tenant_id == Tenant.id)
            .join(Domain, Line.domain_id == Domain.id)
        )
        for tid in (scope, tenant_id):
            if tid is not None:
                query = query.where(Line.tenant_id == tid)
        if q:
            query = query.where(or_(_contains(Line.aor, q), _contains(Line.display_name, q)))
        async with self._store.read() as session:
            total = await _count(session, query)
            rows = await session.execute(
                query.order_by(Tenant.name, Line.aor).limit(limit).offset(offset)
            )
            items = tuple(_line_info(line, t, d) for line, t, d in rows)
        return Page(items, total, limit, offset)

    # --- registrations ----------------------------------------------------------------------

    def _registrations_query(
        self, scope: Scope, tenant_id: int | None, q: str | None, exposed: bool | None
    ) -> Select[Binding, str]:
        now = self._store.clock()
        query = (
            select(Binding, Tenant.name)
            .join(Tenant, Binding.tenant_id == Tenant.id)
            .where(Binding.expires_at > now)
        )
        for tid in (scope, tenant_id):
            if tid is not None:
                query = query.where(Binding.tenant_id == tid)
        if q:
            query = query.where(
                or_(
                    _contains(Binding.aor, q),
                    _contains(Binding.remote_host, q),
                    _contains(Binding.user_agent, q),
                )
            )
        if exposed is not None:
            verdict = Binding.nat_json["verdict"].as_string()
            query = query.where(
                verdict == EXPOSED_VERDICT
                if exposed
                else or_(verdict.is_(None), verdict != EXPOSED_VERDICT)
            )
        return query

    async def registrations(
        self,
        scope: Scope,
        *,
        tenant_id: int | None = None,
        q: str | None = None,
        exposed: bool | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[Registration]:
        _check_page(limit, offset)
        query = self._registrations_query(scope, tenant_id, q, exposed)
        async with self._store.read() as session:
            total = await _count(session, query)
            rows = await session.execute(
                query.order_by(Tenant.name, Binding.aor, Binding.id).limit(limit).offset(offset)
            )
            items = tuple(Registration(b.id, t, _binding_record(b)) for b, t in rows)
        return Page(items, total, limit, offset)

    async def registration(self, scope: Scope, binding_id: int) -> Registration | None:
        query = self._registrations_query(scope, None, None, None).where(Binding.id == binding_id)
        async with self._store.read() as session:
            row = (await session.execute(query)).first()
        return None if row is None else Registration(row[0].id, row[1], _binding_record(row[0]))

    async def registration_counts(self, scope: Scope) -> tuple[int, int]:
        """(active registrations, of which directly reachable from the Internet)."""
        async with self._store.read() as session:
            total = await _count(session, self._registrations_query(scope, None, None, None))
            exposed = await _count(session, self._registrations_query(scope, None, None, True))
        return total, exposed

    # --- devices and compliance -----------------------------------------------------------

    async def _compliance(
        self,
        session: AsyncSession,
        desired: DesiredFiles,
        scope: Scope,
        tenant_id: int | None,
        q: str | None,
    ) -> builtins.list[tuple[int, str, Compliance]]:
        """(device id, MAC, compliance) of every matching device, ordered by tenant, MAC.

        Two queries of narrow columns, whatever the fleet's size: the devices, and the
        latest successful versioned fetch of each (device, file)."""
        devices = select(Device.id, Device.mac).join(Tenant, Device.tenant_id == Tenant.id)
        f = FetchLogRow
        ranked = select(
            f.device_id,
            f.path,
            f.version,
            f.at,
            func.row_number()
            .over(partition_by=(f.device_id, f.path), order_by=(f.at.desc(), f.id.desc()))
            .label("n"),
        ).where(f.device_id.is_not(None), f.status >= 200, f.status < 300, f.version.is_not(None))
        filters: builtins.list[ColumnElement[bool]] = [
            Device.tenant_id == tid for tid in (scope, tenant_id) if tid is not None
        ]
        if q:
            filters.append(or_(_contains(Device.mac, q), _contains(Device.label, q)))
        if filters:
            devices = devices.where(*filters)
            ranked = ranked.join(Device, Device.id == f.device_id).where(*filters)
        latest_rows = ranked.subquery()
        latest = select(
            latest_rows.c.device_id, latest_rows.c.path, latest_rows.c.version, latest_rows.c.at
        ).where(latest_rows.c.n == 1)
        fetched: dict[tuple[int, str], tuple[float, str]] = {}
        for device_id, path, version, at in await session.execute(latest):
            key = (device_id, _file_name(path))
            if key not in fetched or at > fetched[key][0]:
                fetched[key] = (at, version)
        out: builtins.list[tuple[int, str, Compliance]] = []
        for device_id, mac in await session.execute(devices.order_by(Tenant.name, Device.mac)):
            want = desired.get(mac)
            if want is None:
                out.append((device_id, mac, "invalid"))
                continue
            last = fetched.get((device_id, _file_name(want[0])))
            out.append((device_id, mac, compliance(want[1], None if last is None else last[1])))
        return out

    async def devices(
        self,
        scope: Scope,
        desired: DesiredFiles,
        *,
        tenant_id: int | None = None,
        q: str | None = None,
        compliant: bool | None = None,
        state: Compliance | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[DeviceStatus]:
        """`compliant` keeps the (non-)compliant devices, `state` those in one state."""
        _check_page(limit, offset)
        async with self._store.read() as session:
            states = await self._compliance(session, desired, scope, tenant_id, q)
            if compliant is not None:
                states = [s for s in states if (s[2] == "compliant") == compliant]
            if state is not None:
                states = [s for s in states if s[2] == state]
            page = states[offset : offset + limit]
            items = await self._statuses(session, page)
        return Page(items, len(states), limit, offset)

    async def device(self, scope: Scope, desired: DesiredFiles, mac: str) -> DeviceStatus | None:
        async with self._store.read() as session:
            states = [
                s for s in await self._compliance(session, desired, scope, None, mac) if s[1] == mac
            ]
            items = await self._statuses(session, states)
        return items[0] if items else None

    async def stale_macs(
        self, scope: Scope, desired: DesiredFiles, tenant_id: int | None = None
    ) -> builtins.list[str]:
        """Every device not running its current configuration (as `device resync --stale`)."""
        async with self._store.read() as session:
            states = await self._compliance(session, desired, scope, tenant_id, None)
        return [mac for _, mac, state in states if state != "compliant"]

    async def device_macs(
        self,
        scope: Scope,
        *,
        tenant_id: int | None = None,
        macs: Sequence[str] | None = None,
    ) -> builtins.list[str]:
        """The MACs of the devices in `scope` (of one tenant, or of those given)."""
        query = select(Device.mac).join(Tenant, Device.tenant_id == Tenant.id)
        for tid in (scope, tenant_id):
            if tid is not None:
                query = query.where(Device.tenant_id == tid)
        if macs is not None:
            query = query.where(Device.mac.in_(macs))
        async with self._store.read() as session:
            return list(await session.scalars(query.order_by(Tenant.name, Device.mac)))

    async def compliance_counts(self, scope: Scope, desired: DesiredFiles) -> dict[Compliance, int]:
        counts: dict[Compliance, int] = dict.fromkeys(COMPLIANCE_STATES, 0)
        async with self._store.read() as session:
            for _, _, state in await self._compliance(session, desired, scope, None, None):
                counts[state] += 1
        return counts

    async def _statuses(
        self, session: AsyncSession, page: Sequence[tuple[int, str, Compliance]]
    ) -> tuple[DeviceStatus, ...]:
        ids = [device_id for device_id, _, _ in page]
        if not ids:
            return ()
        infos = {d.id: d for d in await _device_infos(session, Device.id.in_(ids))}
        latest = (
            select(func.max(FetchLogRow.id))
            .where(FetchLogRow.device_id.in_(ids))
            .group_by(FetchLogRow.device_id)
        )
        fetches = {
            row.device_id: _fetch_info(row)
            for row in await session.scalars(select(FetchLogRow).where(FetchLogRow.id.in_(latest)))
        }
        return tuple(DeviceStatus(infos[i], fetches.get(i), state) for i, _, state in page)

    # --- fetch log ----------------------------------------------------------------------------

    async def fetches(
        self,
        scope: Scope,
        *,
        mac: str | None = None,
        tenant_id: int | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[FetchInfo]:
        """Newest first. Requests for unknown MACs belong to no tenant: operators only."""
        _check_page(limit, offset)
        query = select(FetchLogRow)
        tenants = [tid for tid in (scope, tenant_id) if tid is not None]
        if tenants:
            query = query.join(Device, Device.id == FetchLogRow.device_id)
            for tid in tenants:
                query = query.where(Device.tenant_id == tid)
        if mac:
            query = query.where(FetchLogRow.mac_requested == mac.strip().lower())
        async with self._store.read() as session:
            total = await _count(session, query)
            rows = await session.scalars(
                query.order_by(FetchLogRow.at.desc(), FetchLogRow.id.desc())
                .limit(limit)
                .offset(offset)
            )
            items = tuple(_fetch_info(r) for r in rows)
        return Page(items, total, limit, offset)
