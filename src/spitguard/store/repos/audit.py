"""The auditor's store: which addresses registered phones reach us from, and what each
audit found per target (and per device, when the target was a device's registration).

Results are plain values; the store does not import the auditor (dependencies point
inward), so the auditor hands over `AuditResultInput`s built from its own results.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, or_, select, true

from ..errors import InvalidInputError, NotFoundError, UnknownTenantError
from ..models import AuditResultRow, AuditRun, Binding, Device, DeviceLine, Line, Tenant
from ._sql import _check_page

if TYPE_CHECKING:
    from ..db import Store

Scope = int | None  # None: every tenant (operator); an id: that tenant only

_VERDICTS = ("rings", "answers", "silent")


@dataclass(frozen=True, slots=True)
class RegisteredAddress:
    """The public address a registered phone reaches the edge from (its NAT binding)."""

    host: str
    port: int
    transport: str
    aor: str
    tenant: str
    device: str | None = None  # MAC of the device carrying that line, if one does


@dataclass(frozen=True, slots=True)
class AuditResultInput:
    host: str
    port: int
    verdict: str  # rings | answers | silent
    exposed: bool
    web_ui: bool
    config: bool
    details: Mapping[str, Any] = field(default_factory=dict)
    address: str | None = None
    aor: str | None = None
    device: str | None = None  # MAC


@dataclass(frozen=True, slots=True)
class AuditResultInfo:
    id: int
    run_id: int
    host: str
    port: int
    address: str | None
    device: str | None  # MAC; None when unknown or since deleted
    aor: str | None
    verdict: str
    exposed: bool
    web_ui: bool
    config: bool
    details: Mapping[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class AuditRunInfo:
    id: int
    started_at: float
    finished_at: float
    options: Mapping[str, Any]
    targets: int
    exposed: int

    @property
    def tenant(self) -> str | None:
        """The tenant whose registered phones the run audited (None: all, or other targets)."""
        value = self.options.get("tenant")
        return value if isinstance(value, str) else None

    @property
    def state(self) -> str:
        """ "running" (begun, no results yet), "done" or "failed"."""
        value = self.options.get("state")
        return value if isinstance(value, str) else "done"


def _visible(scope: Scope) -> ColumnElement[bool]:
    """Results a scope may see: an operator all; a tenant admin those of their tenant's
    devices and lines (results of other targets carry neither, so only operators see them).
    Needs Device outer-joined on the result's device."""
    if scope is None:
        return true()
    return or_(
        Device.tenant_id == scope,
        AuditResultRow.aor.in_(select(Line.aor).where(Line.tenant_id == scope)),
    )


def _run_visible(scope: Scope) -> ColumnElement[bool]:
    """Runs a scope may see: an operator all; a tenant admin the runs of their tenant."""
    if scope is None:
        return true()
    name = select(Tenant.name).where(Tenant.id == scope).scalar_subquery()
    condition: ColumnElement[bool] = AuditRun.options["tenant"].as_string() == name
    return condition


def _run_info(row: AuditRun) -> AuditRunInfo:
    return AuditRunInfo(
        row.id, row.started_at, row.finished_at, dict(row.options), row.targets, row.exposed
    )


def _result_info(row: AuditResultRow, mac: str | None) -> AuditResultInfo:
    return AuditResultInfo(
        id=row.id,
        run_id=row.run_id,
        host=row.host,
        port=row.port,
        address=row.address,
        device=mac,
        aor=row.aor,
        verdict=row.verdict,
        exposed=row.exposed,
        web_ui=row.web_ui,
        config=row.config,
        details=dict(row.details),
        at=row.at,
    )


class AuditRepo:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def registered_addresses(
        self, now: float, tenant: str | None = None
    ) -> builtins.list[RegisteredAddress]:
        """Live bindings' source addresses, one per (host, port), ordered by tenant, AOR."""
        async with self._store.read() as session:
            query = (
                select(Binding, Tenant.name)
                .join(Tenant, Binding.tenant_id == Tenant.id)
                .where(Binding.expires_at > now)
                .order_by(Tenant.name, Binding.aor, Binding.id)
            )
            if tenant is not None:
                known = await session.scalar(select(Tenant.id).where(Tenant.name == tenant))
                if known is None:
                    raise UnknownTenantError(tenant)
                query = query.where(Tenant.name == tenant)
            rows = (await session.execute(query)).all()
            devices: dict[str, str] = {}
            aors = sorted({b.aor for b, _ in rows})
            if aors:
                result = await session.execute(
                    select(Line.aor, Device.mac)
                    .join(DeviceLine, DeviceLine.line_id == Line.id)
                    .join(Device, Device.id == DeviceLine.device_id)
                    .where(Line.aor.in_(aors))
                    .order_by(Device.mac)
                )
                for aor, mac in result:
                    devices.setdefault(aor, mac)
        out: dict[tuple[str, int], RegisteredAddress] = {}
        for binding, tenant_name in rows:
            key = (binding.remote_host, binding.remote_port)
            out.setdefault(
                key,
                RegisteredAddress(
                    host=binding.remote_host,
                    port=binding.remote_port,
                    transport=binding.transport,
                    aor=binding.aor,
                    tenant=tenant_name,
                    device=devices.get(binding.aor),
                ),
            )
        return list(out.values())

    async def record(
        self,
        *,
        started_at: float,
        finished_at: float,
        options: Mapping[str, Any],
        results: Sequence[AuditResultInput],
        run_id: int | None = None,
    ) -> AuditRunInfo:
        """Store one audit and its results in one transaction; with `run_id`, complete the
        run `begin` stored (its options replaced by these)."""
        for r in results:
            if r.verdict not in _VERDICTS:
                raise InvalidInputError(f"unknown audit verdict {r.verdict!r}")
        macs = sorted({r.device for r in results if r.device is not None})
        async with self._store.write() as session:
            ids: dict[str, int] = {}
            if macs:
                found = await session.execute(
                    select(Device.mac, Device.id).where(Device.mac.in_(macs))
                )
                ids = {str(mac): int(device_id) for mac, device_id in found}
            exposed = sum(1 for r in results if r.exposed)
            if run_id is None:
                run = AuditRun(
                    started_at=started_at,
                    finished_at=finished_at,
                    options=dict(options),
                    targets=len(results),
                    exposed=exposed,
                )
                session.add(run)
                await session.flush()
            else:
                begun = await session.get(AuditRun, run_id)
                if begun is None:
                    raise NotFoundError(f"audit run {run_id} not found")
                run = begun
                run.finished_at = finished_at
                run.options = dict(options)
                run.targets = len(results)
                run.exposed = exposed
            session.add_all(
                AuditResultRow(
                    run_id=run.id,
                    host=r.host[:253],
                    port=r.port,
                    address=r.address,
                    device_id=ids.get(r.device) if r.device is not None else None,
                    aor=r.aor,
                    verdict=r.verdict,
                    exposed=r.exposed,
                    web_ui=r.web_ui,
                    config=r.config,
                    details=dict(r.details),
                    at=finished_at,
                )
                for r in results
            )
            return _run_info(run)

    async def begin(self, *, started_at: float, options: Mapping[str, Any]) -> AuditRunInfo:
        """Store a run that has only started (no results yet), so it has an id to report;
        `record(run_id=...)` completes it."""
        async with self._store.write() as session:
            run = AuditRun(
                started_at=started_at,
                finished_at=started_at,
                options=dict(options),
                targets=0,
                exposed=0,
            )
            session.add(run)
            await session.flush()
            return _run_info(run)

    async def runs(
        self, limit: int = 20, *, scope: Scope = None, offset: int = 0
    ) -> builtins.list[AuditRunInfo]:
        """The latest runs visible in `scope`, newest first."""
        _check_page(limit, offset)
        query = (
            select(AuditRun)
            .where(_run_visible(scope))
            .order_by(AuditRun.id.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._store.read() as session:
            return [_run_info(r) for r in await session.scalars(query)]

    async def run(self, run_id: int, *, scope: Scope = None) -> AuditRunInfo | None:
        """One run, if visible in `scope` (None for unknown and foreign alike)."""
        query = select(AuditRun).where(AuditRun.id == run_id, _run_visible(scope))
        async with self._store.read() as session:
            row = await session.scalar(query)
            return None if row is None else _run_info(row)

    async def results(self, run_id: int, *, scope: Scope = None) -> builtins.list[AuditResultInfo]:
        """One run's results visible in `scope`, in the order they were recorded."""
        return await self._results(AuditResultRow.run_id == run_id, _visible(scope))

    async def latest_for_hosts(
        self, addresses: Sequence[tuple[str, int]], *, scope: Scope = None
    ) -> dict[tuple[str, int], AuditResultInfo]:
        """The newest visible result for each (host, port), in bulk: for a page of
        registrations. Addresses never audited are left out."""
        hosts = sorted({h for h, _ in addresses})
        if not hosts:
            return {}
        newest = (
            select(func.max(AuditResultRow.id))
            .outerjoin(Device, Device.id == AuditResultRow.device_id)
            .where(AuditResultRow.host.in_(hosts), _visible(scope))
            .group_by(AuditResultRow.host, AuditResultRow.port)
        )
        wanted = set(addresses)
        found = await self._results(AuditResultRow.id.in_(newest))
        return {(r.host, r.port): r for r in found if (r.host, r.port) in wanted}

    async def latest_for_devices(
        self, macs: Sequence[str], *, scope: Scope = None
    ) -> dict[str, AuditResultInfo]:
        """The newest visible result for each device (by MAC), in bulk: for a page of
        devices. Devices never audited are left out."""
        keys = sorted({m.lower() for m in macs})
        if not keys:
            return {}
        newest = (
            select(func.max(AuditResultRow.id))
            .join(Device, Device.id == AuditResultRow.device_id)
            .where(Device.mac.in_(keys), _visible(scope))
            .group_by(AuditResultRow.device_id)
        )
        found = await self._results(AuditResultRow.id.in_(newest))
        return {r.device: r for r in found if r.device is not None}

    async def latest_for_host(self, host: str, port: int | None = None) -> AuditResultInfo | None:
        """The newest result for an address (any port unless given): for registrations."""
        where = [AuditResultRow.host == host]
        if port is not None:
            where.append(AuditResultRow.port == port)
        found = await self._results(*where, newest=True)
        return found[0] if found else None

    async def latest_for_device(self, mac: str) -> AuditResultInfo | None:
        """The newest result recorded for a device (by MAC): for the device list."""
        found = await self._results(Device.mac == mac.lower(), newest=True)
        return found[0] if found else None

    async def _results(self, *where: Any, newest: bool = False) -> builtins.list[AuditResultInfo]:
        order = (
            (AuditResultRow.at.desc(), AuditResultRow.id.desc()) if newest else (AuditResultRow.id,)
        )
        query = (
            select(AuditResultRow, Device.mac)
            .outerjoin(Device, Device.id == AuditResultRow.device_id)
            .where(*where)
            .order_by(*order)
        )
        if newest:
            query = query.limit(1)
        async with self._store.read() as session:
            rows = (await session.execute(query)).all()
            return [_result_info(row, mac) for row, mac in rows]
