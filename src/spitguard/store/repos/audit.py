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

from sqlalchemy import select

from ..errors import InvalidInputError, UnknownTenantError
from ..models import AuditResultRow, AuditRun, Binding, Device, DeviceLine, Line, Tenant
from ._sql import _check_page

if TYPE_CHECKING:
    from ..db import Store

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
    ) -> AuditRunInfo:
        """Store one audit and its results in one transaction."""
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
            run = AuditRun(
                started_at=started_at,
                finished_at=finished_at,
                options=dict(options),
                targets=len(results),
                exposed=sum(1 for r in results if r.exposed),
            )
            session.add(run)
            await session.flush()
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

    async def runs(self, limit: int = 20) -> builtins.list[AuditRunInfo]:
        """The latest runs, newest first."""
        _check_page(limit)
        async with self._store.read() as session:
            rows = await session.scalars(select(AuditRun).order_by(AuditRun.id.desc()).limit(limit))
            return [_run_info(r) for r in rows]

    async def results(self, run_id: int) -> builtins.list[AuditResultInfo]:
        """One run's results, in the order they were recorded."""
        return await self._results(AuditResultRow.run_id == run_id)

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
