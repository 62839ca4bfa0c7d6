"""The boot server's fetch log and the files phones upload."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from sqlalchemy import (
    Table,
    delete,
    func,
    insert,
    or_,
    select,
)

from ...provision.driver import Weakening
from ...provision.profile import (
    InvalidDeviceConfig,
    normalize_mac,
)
from ..models import (
    Device,
    DeviceUpload,
    FetchLogRow,
)
from ._sql import _check_page, _clip, _rowcount
from .devices import UnknownDeviceError, _normalize_device_mac
from .guard import MAX_SOURCE

if TYPE_CHECKING:
    from ..db import Store


MAX_UPLOAD_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class FetchInfo:
    """One provisioning request. `mac` is the MAC the request named (as given when it was
    not a valid MAC); `device_id` is None when no device has it."""

    id: int
    mac: str
    device_id: int | None
    path: str
    status: int
    version: str | None
    user_agent: str | None
    firmware: str | None
    model: str | None
    source: str
    at: float
    note: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchRecord:
    """One provisioning request to log (`FetchLogRepo.add_batch`)."""

    mac: str
    path: str
    status: int
    source: str
    at: float
    version: str | None = None
    user_agent: str | None = None
    firmware: str | None = None
    model: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class UploadInfo:
    id: int
    mac: str
    kind: str
    path: str
    size: int
    body: bytes = field(repr=False)
    weakening: tuple[Weakening, ...]
    at: float

    @property
    def truncated(self) -> bool:
        return len(self.body) < self.size


class WeakeningLike(Protocol):
    """Anything with the fields of `provision.driver.Weakening`."""

    @property
    def parameter(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def value(self) -> str | None: ...


# --- fetch log and uploads --------------------------------------------------------------------


def _requested_mac(mac: str) -> tuple[str, bool]:
    """(what to store, whether it is a valid device MAC)."""
    try:
        return normalize_mac(mac), True
    except InvalidDeviceConfig:
        return mac.strip().lower()[:64], False


def _fetch_info(row: FetchLogRow) -> FetchInfo:
    return FetchInfo(
        id=row.id,
        mac=row.mac_requested,
        device_id=row.device_id,
        path=row.path,
        status=row.status,
        version=row.version,
        user_agent=row.user_agent,
        firmware=row.firmware,
        model=row.model,
        source=row.source,
        at=row.at,
        note=row.note,
    )


class FetchLogRepo:
    """Which phone (or anyone) fetched which file, with which result and version."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def record(
        self,
        *,
        mac: str,
        path: str,
        status: int,
        source: str,
        version: str | None = None,
        user_agent: str | None = None,
        firmware: str | None = None,
        model: str | None = None,
        at: float | None = None,
    ) -> FetchInfo:
        """Log one request. Texts are clipped to their columns: they come from the network."""
        key, valid = _requested_mac(mac)
        async with self._store.write() as session:
            device_id = None
            if valid:
                device_id = await session.scalar(select(Device.id).where(Device.mac == key))
            row = FetchLogRow(
                device_id=device_id,
                mac_requested=key,
                path=path[:512],
                status=int(status),
                version=_clip(version, 64),
                user_agent=_clip(user_agent, 256),
                firmware=_clip(firmware, 64),
                model=_clip(model, 64),
                source=source[:MAX_SOURCE],
                at=self._store.clock() if at is None else float(at),
            )
            session.add(row)
            await session.flush()
        return _fetch_info(row)

    async def add_batch(self, records: Iterable[FetchRecord]) -> int:
        """Log many requests in one transaction (the boot server writes off its hot path)."""
        batch = list(records)
        if not batch:
            return 0
        keys = {r.mac: _requested_mac(r.mac) for r in batch}
        valid = sorted({key for key, ok in keys.values() if ok})
        async with self._store.write() as session:
            ids: dict[str, int] = {}
            for start in range(0, len(valid), 500):
                result = await session.execute(
                    select(Device.mac, Device.id).where(Device.mac.in_(valid[start : start + 500]))
                )
                ids.update({str(m): int(i) for m, i in result.tuples()})
            # Core executemany on the connection, not ORM objects (nor the ORM's bulk path):
            # a fleet re-provisioning writes tens of thousands of rows.
            connection = await session.connection()
            await connection.execute(
                insert(cast(Table, FetchLogRow.__table__)),
                [
                    {
                        "device_id": ids.get(keys[r.mac][0]),
                        "mac_requested": keys[r.mac][0],
                        "path": r.path[:512],
                        "status": int(r.status),
                        "version": _clip(r.version, 64),
                        "user_agent": _clip(r.user_agent, 256),
                        "firmware": _clip(r.firmware, 64),
                        "model": _clip(r.model, 64),
                        "source": r.source[:MAX_SOURCE],
                        "at": float(r.at),
                        "note": _clip(r.note, 200),
                    }
                    for r in batch
                ],
            )
        return len(batch)

    async def last_note(self, mac: str) -> FetchInfo | None:
        """The device's latest request that carried a note (e.g. a User-Agent mismatch)."""
        key, valid = _requested_mac(mac)
        if not valid:
            return None
        query = (
            select(FetchLogRow)
            .where(FetchLogRow.mac_requested == key, FetchLogRow.note.is_not(None))
            .order_by(FetchLogRow.at.desc(), FetchLogRow.id.desc())
            .limit(1)
        )
        async with self._store.read() as session:
            row = await session.scalar(query)
        return None if row is None else _fetch_info(row)

    async def recent(self, mac: str | None = None, limit: int = 50) -> builtins.list[FetchInfo]:
        """The latest requests (of one MAC when given), newest first."""
        _check_page(limit)
        query = select(FetchLogRow).order_by(FetchLogRow.at.desc(), FetchLogRow.id.desc())
        if mac is not None:
            query = query.where(FetchLogRow.mac_requested == _requested_mac(mac)[0])
        async with self._store.read() as session:
            return [_fetch_info(row) for row in await session.scalars(query.limit(limit))]

    async def last_success(self, mac: str, *, path: str | None = None) -> tuple[str, float] | None:
        """(version, time) of the device's latest successful fetch that has a version; with
        `path`, only fetches of that file name count (compare like with like)."""
        key, valid = _requested_mac(mac)
        if not valid:
            return None
        f = FetchLogRow
        query = (
            select(f.version, f.at)
            .join(Device, f.device_id == Device.id)
            .where(
                Device.mac == key,
                f.status >= 200,
                f.status < 300,
                f.version.is_not(None),
            )
            .order_by(f.at.desc(), f.id.desc())
        )
        if path is not None:
            name = path.rsplit("/", 1)[-1].lower()
            escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            lowered = func.lower(f.path)
            query = query.where(or_(lowered == name, lowered.like(f"%/{escaped}", escape="\\")))
        async with self._store.read() as session:
            row = (await session.execute(query.limit(1))).first()
        if row is None or row[0] is None:
            return None
        return str(row[0]), float(row[1])

    async def purge_before(self, ts: float) -> int:
        """Retention: delete requests logged before `ts`; returns how many."""
        async with self._store.write() as session:
            result = await session.execute(delete(FetchLogRow).where(FetchLogRow.at < ts))
        return _rowcount(result)


def _upload_info(row: DeviceUpload, mac: str) -> UploadInfo:
    return UploadInfo(
        id=row.id,
        mac=mac,
        kind=row.kind,
        path=row.path,
        size=row.size,
        body=row.body,
        weakening=tuple(
            Weakening(str(w.get("parameter")), str(w.get("reason")), w.get("value"))
            for w in row.weakening
        ),
        at=row.at,
    )


class UploadRepo:
    """Files phones uploaded (logs, local override files) and what they weaken."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(
        self,
        mac: str,
        *,
        kind: str,
        path: str,
        body: bytes,
        weakening: Iterable[WeakeningLike] = (),
        size: int | None = None,
        at: float | None = None,
    ) -> UploadInfo:
        """Keep an upload of a known device; the body is capped at MAX_UPLOAD_BODY bytes.
        `size` is the size received (default: len(body))."""
        key = _normalize_device_mac(mac)
        async with self._store.write() as session:
            device_id = await session.scalar(select(Device.id).where(Device.mac == key))
            if device_id is None:
                raise UnknownDeviceError(key)
            row = DeviceUpload(
                device_id=device_id,
                kind=kind[:32],
                path=path[:512],
                size=len(body) if size is None else int(size),
                body=bytes(body[:MAX_UPLOAD_BODY]),
                weakening=[
                    {"parameter": w.parameter, "reason": w.reason, "value": w.value}
                    for w in weakening
                ],
                at=self._store.clock() if at is None else float(at),
            )
            session.add(row)
            await session.flush()
        return _upload_info(row, key)

    async def list(self, mac: str, limit: int = 50) -> builtins.list[UploadInfo]:
        """The device's latest uploads, newest first."""
        _check_page(limit)
        key = _normalize_device_mac(mac)
        async with self._store.read() as session:
            rows = await session.scalars(
                select(DeviceUpload)
                .join(Device, DeviceUpload.device_id == Device.id)
                .where(Device.mac == key)
                .order_by(DeviceUpload.at.desc(), DeviceUpload.id.desc())
                .limit(limit)
            )
            return [_upload_info(row, key) for row in rows]
