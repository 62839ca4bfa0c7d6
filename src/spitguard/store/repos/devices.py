"""Boot server inventory: devices and tenant hardening profiles."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    delete,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from ...provision.profile import (
    DeviceConfig,
    HardeningProfile,
    InvalidDeviceConfig,
    ProvisioningPolling,
    ValidationMethod,
    generate_admin_password,
    normalize_mac,
)
from ...provision.profile import Line as ProvisionLine
from ..crypto import generate_password
from ..errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    StoreError,
    UnknownLineError,
    UnknownTenantError,
)
from ..models import (
    INVENTORY_REVISION_KEY,
    Device,
    DeviceLine,
    Line,
    Revision,
    Tenant,
    TenantProfile,
)
from ._sql import _bump_revision, _now, _rowcount
from .inventory import ParsedAor, parse_aor

if TYPE_CHECKING:
    from ...provision.driver import VendorDriver
    from ..db import Store


# --- boot server: devices, tenant profiles, fetch log, uploads ------------------------------
#
# Devices are checked against the vendor driver when written (MAC, vendor, overrides), so a
# bad inventory entry fails at the CLI or API, not when a phone asks for its file. The
# driver registry lives in provision.inventory and is imported when first needed: it pulls
# in the template engine, which store users that never touch devices should not pay for.

DEFAULT_VENDOR = "polycom"
MAX_DEVICE_TEXT = 64
MAX_LINE_KEY = 255
# Uploads are kept for the portal (what did the phone change?); a log can be megabytes,
# its first 64 KiB tell enough. `size` keeps the received size.
DEFAULT_INVITE_VALIDATION: ValidationMethod = "source"
# check-sync NOTIFYs digest-challenged by default: a spoofed one would make phones reboot.
DEFAULT_CHECKSYNC_VALIDATION: ValidationMethod = "digest"
_VALIDATION_VALUES: tuple[ValidationMethod, ...] = ("source", "digest", "both")
# AORs/MACs per IN (...) query: far below the bound-parameter limits of both backends.
_IN_CHUNK = 500
# Devices per query of `DeviceRepo.snapshot`: a few milliseconds of row processing each.
SNAPSHOT_CHUNK = 500
# Where the overrides are checked, the edge is unknown; drivers only need some valid host.
_PLACEHOLDER_EDGE = "edge.invalid"
_PLACEHOLDER_SECRET = "placeholder"  # noqa: S105 - never rendered, only validated


class UnknownDeviceError(NotFoundError):
    def __init__(self, mac: str) -> None:
        super().__init__(f'device "{mac}" does not exist')
        self.mac = mac


@dataclass(frozen=True, slots=True)
class RowProblem:
    """What is wrong with one row of an import; `line` is the row's source line (or its
    1-based position when the rows carry none)."""

    line: int
    message: str


class DeviceImportError(InvalidInputError):
    """An import was refused as a whole; `problems` lists every bad row."""

    def __init__(self, problems: Sequence[RowProblem], rows: int) -> None:
        bad = len({p.line for p in problems})
        super().__init__(f"{bad} of {rows} rows are bad; nothing was imported")
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class DeviceLineInfo:
    key: int
    aor: str


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device without its passwords."""

    id: int
    mac: str
    tenant: str
    vendor: str
    model: str | None
    label: str | None
    lines: tuple[DeviceLineInfo, ...]
    overrides: Mapping[str, str]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DeviceLineSecret:
    """A line of a device with its decrypted SIP password, for rendering its file."""

    key: int
    aor: str
    auth_user: str
    display_name: str | None
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class DeviceSecrets:
    """A device's decrypted passwords: the admin password rendered into its file, the
    password it fetches that file with, and its lines' SIP passwords."""

    mac: str
    admin_password: str = field(repr=False)
    provisioning_password: str = field(repr=False)
    lines: tuple[DeviceLineSecret, ...] = ()


@dataclass(frozen=True, slots=True)
class SealedLine:
    """A line of a device as stored: its SIP password still sealed."""

    key: int
    aor: str
    auth_user: str
    display_name: str | None
    password_enc: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SealedDevice:
    """A device with everything its configuration is rendered from, passwords still
    sealed. Two equal values render the same bytes (given the same profile and edge), so
    the boot server compares them between reloads without decrypting anything; a changed
    password always changes its sealed bytes (every encryption draws a fresh IV)."""

    info: DeviceInfo
    admin_password_enc: bytes = field(repr=False)
    prov_password_enc: bytes = field(repr=False)
    lines: tuple[SealedLine, ...] = ()


@dataclass(frozen=True, slots=True)
class InventorySnapshot:
    """Every device (ordered by tenant then MAC) and every tenant's profile, read in one
    transaction at inventory revision ``revision``."""

    revision: int
    devices: tuple[SealedDevice, ...]
    profiles: Mapping[str, ProfileInfo]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRow:
    """One device to add: `lines` are (line key, AOR) pairs."""

    mac: str
    tenant: str
    lines: Sequence[tuple[int, str]]
    vendor: str = DEFAULT_VENDOR
    model: str | None = None
    label: str | None = None
    overrides: Mapping[str, str] | None = None
    source_line: int | None = None


@dataclass(frozen=True, slots=True)
class ProfileInfo:
    """A tenant's hardening profile; `updated_at` is None while the defaults apply."""

    tenant: str
    web_ui: bool = False
    invite_validation: ValidationMethod = DEFAULT_INVITE_VALIDATION
    checksync_validation: ValidationMethod = DEFAULT_CHECKSYNC_VALIDATION
    polling: ProvisioningPolling | None = None
    resync_reboots: bool | None = None
    updated_at: datetime | None = None


class _Keep(Enum):
    """Marks a profile field `ProfileRepo.set` leaves as it is (None is a real value)."""

    KEEP = "keep"


KEEP = _Keep.KEEP


def _driver(vendor: str) -> VendorDriver:
    from ...provision.inventory import driver_for

    try:
        return driver_for(vendor)
    except InvalidDeviceConfig as exc:
        raise InvalidInputError(str(exc)) from None


def _normalize_device_mac(mac: str) -> str:
    try:
        return normalize_mac(mac)
    except InvalidDeviceConfig as exc:
        raise InvalidInputError(
            f"{exc}; give 12 hex digits, e.g. 0004f2abcdef or 00:04:F2:AB:CD:EF"
        ) from None


def _check_device_text(name: str, value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    if len(text) > MAX_DEVICE_TEXT or not text.isprintable():
        raise InvalidInputError(f"{name} must be at most {MAX_DEVICE_TEXT} printable characters")
    return text


def _check_overrides(overrides: Mapping[str, str] | None) -> dict[str, str]:
    values = dict(overrides or {})
    for name, value in values.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidInputError("overrides must map parameter names to string values")
    return values


def _line_pairs(lines: Sequence[tuple[int, str]]) -> list[tuple[int, ParsedAor]]:
    """(key, AOR) pairs checked for form: keys 1..255 and unique, AORs valid and unique."""
    if not lines:
        raise InvalidInputError("a device needs at least one line, e.g. 1=1001@acme.example.com")
    pairs: list[tuple[int, ParsedAor]] = []
    keys: set[int] = set()
    aors: set[str] = set()
    for key, aor in lines:
        if isinstance(key, bool) or not isinstance(key, int) or not 1 <= key <= MAX_LINE_KEY:
            raise InvalidInputError(f"line key {key!r} is not a whole number 1..{MAX_LINE_KEY}")
        if key in keys:
            raise InvalidInputError(f"line key {key} is given twice")
        parsed = parse_aor(aor)
        if parsed.aor in aors:
            raise InvalidInputError(f'line "{parsed.aor}" is given twice')
        keys.add(key)
        aors.add(parsed.aor)
        pairs.append((key, parsed))
    return sorted(pairs, key=lambda pair: pair[0])


@dataclass(frozen=True, slots=True)
class _LineRef:
    id: int
    aor: str
    auth_user: str
    tenant_id: int
    tenant: str


async def _line_refs(session: AsyncSession, aors: Iterable[str]) -> dict[str, _LineRef]:
    wanted = sorted(set(aors))
    refs: dict[str, _LineRef] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        result = await session.execute(
            select(Line.id, Line.aor, Line.auth_user, Line.tenant_id, Tenant.name)
            .join(Tenant, Line.tenant_id == Tenant.id)
            .where(Line.aor.in_(wanted[start : start + _IN_CHUNK]))
        )
        for line_id, aor, auth_user, tenant_id, tenant in result:
            refs[aor] = _LineRef(line_id, aor, auth_user, tenant_id, tenant)
    return refs


def _match_lines(
    pairs: Sequence[tuple[int, ParsedAor]], refs: Mapping[str, _LineRef], tenant: str
) -> list[tuple[int, _LineRef]]:
    """Each AOR must be an existing line of `tenant` (a phone must not carry the
    credentials of another customer)."""
    matched: list[tuple[int, _LineRef]] = []
    for key, parsed in pairs:
        ref = refs.get(parsed.aor)
        if ref is None:
            raise UnknownLineError(parsed.aor)
        if ref.tenant != tenant:
            raise InvalidInputError(
                f'line "{parsed.aor}" belongs to tenant "{ref.tenant}", not to "{tenant}"'
            )
        matched.append((key, ref))
    return matched


def _check_renderable(
    *,
    mac: str,
    vendor: str,
    lines: Sequence[tuple[int, _LineRef]],
    overrides: Mapping[str, str],
    admin_password: str,
    web_ui: bool,
) -> None:
    """Ask the vendor's driver whether it accepts the device (overrides above all)."""
    driver = _driver(vendor)
    try:
        config = DeviceConfig(
            mac=mac,
            vendor=driver.vendor,
            lines=tuple(
                ProvisionLine(
                    key=key,
                    aor=ref.aor.removeprefix("sip:"),
                    auth_user=ref.auth_user,
                    password=_PLACEHOLDER_SECRET,
                )
                for key, ref in lines
            ),
            profile=HardeningProfile(
                edge_host=_PLACEHOLDER_EDGE, admin_password=admin_password, web_ui=web_ui
            ),
            overrides=overrides,
        )
        driver.validate(config)
    except InvalidDeviceConfig as exc:
        raise InvalidInputError(str(exc)) from None


async def _tenant_ids(session: AsyncSession, names: Iterable[str]) -> dict[str, int]:
    wanted = sorted(set(names))
    result = await session.execute(select(Tenant.name, Tenant.id).where(Tenant.name.in_(wanted)))
    return {str(name): int(tenant_id) for name, tenant_id in result}


async def _web_ui_by_tenant(session: AsyncSession, tenant_ids: Iterable[int]) -> dict[int, bool]:
    result = await session.execute(
        select(TenantProfile.tenant_id, TenantProfile.web_ui).where(
            TenantProfile.tenant_id.in_(sorted(set(tenant_ids)))
        )
    )
    return {tenant_id: bool(web_ui) for tenant_id, web_ui in result}


async def _device_infos(
    session: AsyncSession, *where: ColumnElement[bool]
) -> builtins.list[DeviceInfo]:
    """Devices matching `where`, with their tenant and lines, ordered by tenant then MAC."""
    rows = (
        await session.execute(
            select(Device, Tenant.name)
            .join(Tenant, Device.tenant_id == Tenant.id)
            .where(*where)
            .order_by(Tenant.name, Device.mac)
        )
    ).all()
    lines: dict[int, builtins.list[DeviceLineInfo]] = {}
    ids = [device.id for device, _ in rows]
    for start in range(0, len(ids), _IN_CHUNK):
        result = await session.execute(
            select(DeviceLine.device_id, DeviceLine.line_key, Line.aor)
            .join(Line, DeviceLine.line_id == Line.id)
            .where(DeviceLine.device_id.in_(ids[start : start + _IN_CHUNK]))
            .order_by(DeviceLine.device_id, DeviceLine.line_key)
        )
        for device_id, key, aor in result:
            lines.setdefault(device_id, []).append(DeviceLineInfo(key, aor))
    return [
        DeviceInfo(
            id=device.id,
            mac=device.mac,
            tenant=tenant,
            vendor=device.vendor,
            model=device.model,
            label=device.label,
            lines=tuple(lines.get(device.id, ())),
            overrides=MappingProxyType(dict(device.overrides)),
            created_at=device.created_at,
            updated_at=device.updated_at,
        )
        for device, tenant in rows
    ]


async def _device_row(session: AsyncSession, mac: str) -> tuple[Device, str]:
    row = (
        await session.execute(
            select(Device, Tenant.name)
            .join(Tenant, Device.tenant_id == Tenant.id)
            .where(Device.mac == mac)
        )
    ).first()
    if row is None:
        raise UnknownDeviceError(mac)
    return row[0], row[1]


async def _one_device(session: AsyncSession, mac: str) -> DeviceInfo:
    infos = await _device_infos(session, Device.mac == mac)
    if not infos:
        raise UnknownDeviceError(mac)
    return infos[0]


@dataclass(slots=True)
class _NewDevice:
    mac: str
    tenant_id: int
    vendor: str
    model: str | None
    label: str | None
    lines: builtins.list[tuple[int, _LineRef]]
    overrides: dict[str, str]
    admin_password: str
    prov_password: str


class DeviceRepo:
    """Desk phones: MAC, tenant, vendor, lines on line keys, per-device overrides, and two
    generated passwords (admin, provisioning) sealed at rest."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(
        self,
        mac: str,
        *,
        tenant: str,
        vendor: str = DEFAULT_VENDOR,
        model: str | None = None,
        label: str | None = None,
        lines: Sequence[tuple[int, str]],
        overrides: Mapping[str, str] | None = None,
    ) -> DeviceInfo:
        """Add one device; raises the first problem found as a StoreError."""
        row = DeviceRow(
            mac=mac,
            tenant=tenant,
            vendor=vendor,
            model=model,
            label=label,
            lines=lines,
            overrides=overrides,
        )
        async with self._store.write() as session:
            checked, problems = await self._check_rows(session, [row])
            if problems:
                raise problems[0][1]
            await self._insert(session, checked)
            return await _one_device(session, checked[0].mac)

    async def import_rows(
        self, rows: Sequence[DeviceRow], *, check_only: bool = False
    ) -> builtins.list[DeviceInfo]:
        """Add many devices in one transaction: all of them, or none and a
        DeviceImportError listing every bad row. A MAC twice in `rows` is a bad row (each
        repeat). With `check_only`, only validate (returns [] when all rows are good)."""
        if not rows:
            return []
        context = self._store.read() if check_only else self._store.write()
        async with context as session:
            checked, problems = await self._check_rows(session, rows)
            if problems:
                raise DeviceImportError(
                    [RowProblem(line, str(exc)) for line, exc in problems], len(rows)
                )
            if check_only:
                return []
            await self._insert(session, checked)
            macs = [device.mac for device in checked]
            infos = {
                info.mac: info
                for start in range(0, len(macs), _IN_CHUNK)
                for info in await _device_infos(
                    session, Device.mac.in_(macs[start : start + _IN_CHUNK])
                )
            }
        return [infos[mac] for mac in macs]

    async def _check_rows(
        self, session: AsyncSession, rows: Sequence[DeviceRow]
    ) -> tuple[builtins.list[_NewDevice], builtins.list[tuple[int, StoreError]]]:
        """Every row checked against the database as it is inside this transaction."""
        tenants = await _tenant_ids(session, (r.tenant.strip().lower() for r in rows))
        aors: set[str] = set()
        macs: set[str] = set()
        for row in rows:
            for _, aor in row.lines:
                with contextlib.suppress(InvalidInputError):
                    aors.add(parse_aor(aor).aor)
            with contextlib.suppress(InvalidDeviceConfig):
                macs.add(normalize_mac(row.mac))
        refs = await _line_refs(session, aors)
        existing = await self._existing_macs(session, macs)
        web_ui = await _web_ui_by_tenant(session, tenants.values())
        first_line: dict[str, int] = {}
        checked: builtins.list[_NewDevice] = []
        problems: builtins.list[tuple[int, StoreError]] = []
        for position, row in enumerate(rows, start=1):
            line = row.source_line if row.source_line is not None else position
            try:
                mac = _normalize_device_mac(row.mac)
                if mac in first_line:
                    raise AlreadyExistsError(
                        f'MAC "{mac}" is given twice (first on line {first_line[mac]})'
                    )
                first_line[mac] = line
                checked.append(self._check_row(row, mac, tenants, refs, existing, web_ui))
            except StoreError as exc:
                problems.append((line, exc))
        return checked, problems

    def _check_row(
        self,
        row: DeviceRow,
        mac: str,
        tenants: Mapping[str, int],
        refs: Mapping[str, _LineRef],
        existing: Mapping[str, str],
        web_ui: Mapping[int, bool],
    ) -> _NewDevice:
        tenant = row.tenant.strip().lower()
        tenant_id = tenants.get(tenant)
        if tenant_id is None:
            raise UnknownTenantError(tenant)
        if mac in existing:
            raise AlreadyExistsError(f'device "{mac}" already exists (tenant "{existing[mac]}")')
        vendor = _driver(row.vendor).vendor
        model = _check_device_text("model", row.model)
        label = _check_device_text("label", row.label)
        overrides = _check_overrides(row.overrides)
        lines = _match_lines(_line_pairs(row.lines), refs, tenant)
        admin_password = generate_admin_password()
        _check_renderable(
            mac=mac,
            vendor=vendor,
            lines=lines,
            overrides=overrides,
            admin_password=admin_password,
            web_ui=web_ui.get(tenant_id, False),
        )
        return _NewDevice(
            mac=mac,
            tenant_id=tenant_id,
            vendor=vendor,
            model=model,
            label=label,
            lines=lines,
            overrides=overrides,
            admin_password=admin_password,
            prov_password=generate_password(),
        )

    @staticmethod
    async def _existing_macs(session: AsyncSession, macs: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(macs))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            result = await session.execute(
                select(Device.mac, Tenant.name)
                .join(Tenant, Device.tenant_id == Tenant.id)
                .where(Device.mac.in_(wanted[start : start + _IN_CHUNK]))
            )
            found.update((str(mac), str(tenant)) for mac, tenant in result)
        return found

    async def _insert(self, session: AsyncSession, devices: Sequence[_NewDevice]) -> None:
        box = self._store.box
        now = _now(self._store)
        rows = [
            Device(
                tenant_id=d.tenant_id,
                mac=d.mac,
                vendor=d.vendor,
                model=d.model,
                label=d.label,
                admin_password_enc=box.encrypt(d.admin_password),
                prov_password_enc=box.encrypt(d.prov_password),
                overrides=d.overrides,
                created_at=now,
                updated_at=now,
            )
            for d in devices
        ]
        session.add_all(rows)
        await session.flush()
        session.add_all(
            DeviceLine(device_id=row.id, line_key=key, line_id=ref.id)
            for row, d in zip(rows, devices, strict=True)
            for key, ref in d.lines
        )
        await session.flush()
        await _bump_revision(session)

    async def get(self, mac: str) -> DeviceInfo | None:
        try:
            key = normalize_mac(mac)
        except InvalidDeviceConfig:
            return None
        async with self._store.read() as session:
            infos = await _device_infos(session, Device.mac == key)
        return infos[0] if infos else None

    async def list(self, tenant: str | None = None) -> builtins.list[DeviceInfo]:
        """All devices (of one tenant when given), ordered by tenant then MAC."""
        where: builtins.list[ColumnElement[bool]] = []
        async with self._store.read() as session:
            if tenant is not None:
                name = tenant.strip().lower()
                if await session.scalar(select(Tenant.id).where(Tenant.name == name)) is None:
                    raise UnknownTenantError(name)
                where.append(Tenant.name == name)
            return await _device_infos(session, *where)

    async def credentials(self, mac: str) -> DeviceSecrets | None:
        """The device's passwords and its lines' SIP passwords, decrypted."""
        try:
            key = normalize_mac(mac)
        except InvalidDeviceConfig:
            return None
        async with self._store.read() as session:
            device = await session.scalar(select(Device).where(Device.mac == key))
            if device is None:
                return None
            result = await session.execute(
                select(DeviceLine.line_key, Line)
                .join(Line, DeviceLine.line_id == Line.id)
                .where(DeviceLine.device_id == device.id)
                .order_by(DeviceLine.line_key)
            )
            lines = [(line_key, line) for line_key, line in result]
        box = self._store.box
        return DeviceSecrets(
            mac=device.mac,
            admin_password=box.decrypt(device.admin_password_enc),
            provisioning_password=box.decrypt(device.prov_password_enc),
            lines=tuple(
                DeviceLineSecret(
                    key=line_key,
                    aor=line.aor,
                    auth_user=line.auth_user,
                    display_name=line.display_name,
                    password=box.decrypt(line.password_enc),
                )
                for line_key, line in lines
            ),
        )

    async def all_credentials(self) -> dict[str, DeviceSecrets]:
        """Every device's secrets by MAC, in two queries (the boot server's snapshot).
        Columns, not ORM objects: this runs over the whole fleet on every reload."""
        async with self._store.read() as session:
            devices = (
                await session.execute(
                    select(
                        Device.id, Device.mac, Device.admin_password_enc, Device.prov_password_enc
                    )
                )
            ).all()
            result = await session.execute(
                select(
                    DeviceLine.device_id,
                    DeviceLine.line_key,
                    Line.aor,
                    Line.auth_user,
                    Line.display_name,
                    Line.password_enc,
                )
                .join(Line, DeviceLine.line_id == Line.id)
                .order_by(DeviceLine.device_id, DeviceLine.line_key)
            )
            box = self._store.box
            lines: dict[int, builtins.list[DeviceLineSecret]] = {}
            for device_id, key, aor, auth_user, display_name, password_enc in result:
                lines.setdefault(device_id, []).append(
                    DeviceLineSecret(
                        key=key,
                        aor=aor,
                        auth_user=auth_user,
                        display_name=display_name,
                        password=box.decrypt(password_enc),
                    )
                )
        return {
            mac: DeviceSecrets(
                mac=mac,
                admin_password=box.decrypt(admin_enc),
                provisioning_password=box.decrypt(prov_enc),
                lines=tuple(lines.get(device_id, ())),
            )
            for device_id, mac, admin_enc, prov_enc in devices
        }

    async def snapshot(self, *, chunk: int = SNAPSHOT_CHUNK) -> InventorySnapshot:
        """The whole inventory as the boot server renders it, passwords still sealed.

        Read in chunks of `chunk` devices in one read transaction, so turning rows into
        objects never holds the event loop for long: each chunk's query is awaited.
        Columns, not ORM objects: this runs over the whole fleet on every reload."""
        devices: builtins.list[SealedDevice] = []
        async with self._store.read() as session:
            revision = await session.scalar(
                select(Revision.value).where(Revision.key == INVENTORY_REVISION_KEY)
            )
            profile_rows = await session.execute(
                select(Tenant.name, TenantProfile).outerjoin(
                    TenantProfile, TenantProfile.tenant_id == Tenant.id
                )
            )
            profiles = {str(name): _profile_info(name, row) for name, row in profile_rows}
            last_id = 0
            while True:
                rows = (
                    await session.execute(
                        select(
                            Device.id,
                            Device.mac,
                            Tenant.name,
                            Device.vendor,
                            Device.model,
                            Device.label,
                            Device.overrides,
                            Device.created_at,
                            Device.updated_at,
                            Device.admin_password_enc,
                            Device.prov_password_enc,
                        )
                        .join(Tenant, Device.tenant_id == Tenant.id)
                        .where(Device.id > last_id)
                        .order_by(Device.id)
                        .limit(chunk)
                    )
                ).all()
                if not rows:
                    break
                first_id, last_id = rows[0][0], rows[-1][0]
                lines: dict[int, builtins.list[SealedLine]] = {}
                result = await session.execute(
                    select(
                        DeviceLine.device_id,
                        DeviceLine.line_key,
                        Line.aor,
                        Line.auth_user,
                        Line.display_name,
                        Line.password_enc,
                    )
                    .join(Line, DeviceLine.line_id == Line.id)
                    .where(DeviceLine.device_id.between(first_id, last_id))
                    .order_by(DeviceLine.device_id, DeviceLine.line_key)
                )
                for device_id, key, aor, auth_user, display_name, password_enc in result:
                    lines.setdefault(device_id, []).append(
                        SealedLine(key, aor, auth_user, display_name, password_enc)
                    )
                for (
                    device_id,
                    mac,
                    tenant,
                    vendor,
                    model,
                    label,
                    overrides,
                    created_at,
                    updated_at,
                    admin_enc,
                    prov_enc,
                ) in rows:
                    sealed = tuple(lines.get(device_id, ()))
                    devices.append(
                        SealedDevice(
                            DeviceInfo(
                                id=device_id,
                                mac=mac,
                                tenant=tenant,
                                vendor=vendor,
                                model=model,
                                label=label,
                                lines=tuple(DeviceLineInfo(x.key, x.aor) for x in sealed),
                                overrides=MappingProxyType(dict(overrides)),
                                created_at=created_at,
                                updated_at=updated_at,
                            ),
                            admin_enc,
                            prov_enc,
                            sealed,
                        )
                    )
        devices.sort(key=lambda d: (d.info.tenant, d.info.mac))
        return InventorySnapshot(int(revision or 0), tuple(devices), profiles)

    def unseal(self, device: SealedDevice) -> DeviceSecrets:
        """A device's passwords and its lines' SIP passwords, decrypted."""
        box = self._store.box
        return DeviceSecrets(
            mac=device.info.mac,
            admin_password=box.decrypt(device.admin_password_enc),
            provisioning_password=box.decrypt(device.prov_password_enc),
            lines=tuple(
                DeviceLineSecret(
                    key=line.key,
                    aor=line.aor,
                    auth_user=line.auth_user,
                    display_name=line.display_name,
                    password=box.decrypt(line.password_enc),
                )
                for line in device.lines
            ),
        )

    async def set_lines(self, mac: str, lines: Sequence[tuple[int, str]]) -> DeviceInfo:
        """Replace the device's lines; each must be a line of the device's tenant."""
        key = _normalize_device_mac(mac)
        pairs = _line_pairs(lines)
        async with self._store.write() as session:
            device, tenant = await _device_row(session, key)
            refs = await _line_refs(session, (p.aor for _, p in pairs))
            matched = _match_lines(pairs, refs, tenant)
            await self._check_stored(session, device, lines=matched)
            await session.execute(delete(DeviceLine).where(DeviceLine.device_id == device.id))
            session.add_all(
                DeviceLine(device_id=device.id, line_key=k, line_id=ref.id) for k, ref in matched
            )
            device.updated_at = _now(self._store)
            await session.flush()
            await _bump_revision(session)
            return await _one_device(session, key)

    async def set_overrides(self, mac: str, overrides: Mapping[str, str]) -> DeviceInfo:
        """Replace the device's vendor parameter overrides (checked by its driver)."""
        key = _normalize_device_mac(mac)
        values = _check_overrides(overrides)
        async with self._store.write() as session:
            device, _ = await _device_row(session, key)
            await self._check_stored(session, device, overrides=values)
            device.overrides = values
            device.updated_at = _now(self._store)
            await session.flush()
            await _bump_revision(session)
            return await _one_device(session, key)

    async def delete(self, mac: str) -> bool:
        """Remove a device; False when there was none. Its fetch log stays, unlinked."""
        try:
            key = normalize_mac(mac)
        except InvalidDeviceConfig:
            return False
        async with self._store.write() as session:
            result = await session.execute(delete(Device).where(Device.mac == key))
            removed = _rowcount(result) > 0
            if removed:
                await _bump_revision(session)
        return removed

    async def _check_stored(
        self,
        session: AsyncSession,
        device: Device,
        *,
        lines: Sequence[tuple[int, _LineRef]] | None = None,
        overrides: Mapping[str, str] | None = None,
        web_ui: bool | None = None,
    ) -> None:
        """Check a stored device with some of its parts replaced."""
        if lines is None:
            result = await session.execute(
                select(DeviceLine.line_key, Line.id, Line.aor, Line.auth_user)
                .join(Line, DeviceLine.line_id == Line.id)
                .where(DeviceLine.device_id == device.id)
            )
            lines = [(k, _LineRef(i, a, u, device.tenant_id, "")) for k, i, a, u in result]
        if web_ui is None:
            web_ui = (await _web_ui_by_tenant(session, [device.tenant_id])).get(
                device.tenant_id, False
            )
        _check_renderable(
            mac=device.mac,
            vendor=device.vendor,
            lines=lines,
            overrides=device.overrides if overrides is None else overrides,
            admin_password=self._store.box.decrypt(device.admin_password_enc),
            web_ui=web_ui,
        )


# --- tenant profiles ------------------------------------------------------------------------


def _check_validation(name: str, value: str) -> ValidationMethod:
    for method in _VALIDATION_VALUES:
        if value == method:
            return method
    raise InvalidInputError(f"{name} must be one of {', '.join(_VALIDATION_VALUES)}")


def _polling_json(polling: ProvisioningPolling | None) -> dict[str, Any] | None:
    if polling is None:
        return None
    return {
        "mode": polling.mode,
        "period": polling.period,
        "time": polling.time,
        "time_random_end": polling.time_random_end,
    }


def _profile_info(tenant: str, row: TenantProfile | None) -> ProfileInfo:
    if row is None:
        return ProfileInfo(tenant=tenant)
    polling = None
    if row.polling is not None:
        try:
            polling = ProvisioningPolling(**row.polling)
        except (InvalidDeviceConfig, TypeError) as exc:
            raise StoreError(f'the stored polling of tenant "{tenant}" is invalid: {exc}') from None
    return ProfileInfo(
        tenant=tenant,
        web_ui=bool(row.web_ui),
        invite_validation=_check_validation("invite_validation", row.invite_validation),
        checksync_validation=_check_validation("checksync_validation", row.checksync_validation),
        polling=polling,
        resync_reboots=row.resync_reboots,
        updated_at=row.updated_at,
    )


async def _tenant_id(session: AsyncSession, tenant: str) -> tuple[int, str]:
    name = tenant.strip().lower()
    tenant_id = await session.scalar(select(Tenant.id).where(Tenant.name == name))
    if tenant_id is None:
        raise UnknownTenantError(name)
    return tenant_id, name


class ProfileRepo:
    """Per-tenant hardening: web UI, INVITE and check-sync validation, polling, reboots."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, tenant: str) -> ProfileInfo:
        """The tenant's profile; the strict defaults when it never set one."""
        async with self._store.read() as session:
            tenant_id, name = await _tenant_id(session, tenant)
            return _profile_info(name, await session.get(TenantProfile, tenant_id))

    async def set(
        self,
        tenant: str,
        *,
        web_ui: bool | _Keep = KEEP,
        invite_validation: str | _Keep = KEEP,
        checksync_validation: str | _Keep = KEEP,
        polling: ProvisioningPolling | _Keep | None = KEEP,
        resync_reboots: bool | _Keep | None = KEEP,
    ) -> ProfileInfo:
        """Change the given fields (None for polling/resync_reboots: leave the phone's own
        setting alone). Refused when a device's overrides would no longer render."""
        if not isinstance(web_ui, _Keep | bool):
            raise InvalidInputError("web_ui must be true or false")
        if not isinstance(resync_reboots, _Keep | bool | None):
            raise InvalidInputError("resync_reboots must be true, false or unset")
        if not isinstance(polling, _Keep | ProvisioningPolling | None):
            raise InvalidInputError("polling must be a ProvisioningPolling or None")
        invite = (
            invite_validation
            if isinstance(invite_validation, _Keep)
            else _check_validation("invite validation", invite_validation)
        )
        checksync = (
            checksync_validation
            if isinstance(checksync_validation, _Keep)
            else _check_validation("check-sync validation", checksync_validation)
        )
        async with self._store.write() as session:
            tenant_id, name = await _tenant_id(session, tenant)
            row = await session.get(TenantProfile, tenant_id)
            if row is None:
                row = TenantProfile(
                    tenant_id=tenant_id,
                    web_ui=False,
                    invite_validation=DEFAULT_INVITE_VALIDATION,
                    checksync_validation=DEFAULT_CHECKSYNC_VALIDATION,
                    polling=None,
                    resync_reboots=None,
                )
                session.add(row)
            if not isinstance(web_ui, _Keep):
                if not web_ui and row.web_ui:
                    await self._check_devices(session, tenant_id, web_ui=False)
                row.web_ui = web_ui
            if not isinstance(invite, _Keep):
                row.invite_validation = invite
            if not isinstance(checksync, _Keep):
                row.checksync_validation = checksync
            if not isinstance(polling, _Keep):
                row.polling = _polling_json(polling)
            if not isinstance(resync_reboots, _Keep):
                row.resync_reboots = resync_reboots
            row.updated_at = _now(self._store)
            await session.flush()
            await _bump_revision(session)
            return _profile_info(name, row)

    async def allow_web_ui(self, tenant: str, allowed: bool) -> ProfileInfo:
        """Let this tenant's phones serve their web UI again (or switch it off)."""
        return await self.set(tenant, web_ui=allowed)

    async def _check_devices(self, session: AsyncSession, tenant_id: int, *, web_ui: bool) -> None:
        devices = await session.scalars(
            select(Device).where(Device.tenant_id == tenant_id).order_by(Device.mac)
        )
        repo = DeviceRepo(self._store)
        for device in devices:
            if not device.overrides:
                continue
            try:
                await repo._check_stored(session, device, web_ui=web_ui)
            except InvalidInputError as exc:
                raise InvalidInputError(f"device {device.mac}: {exc}; change it first") from None
