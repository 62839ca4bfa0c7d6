"""Guard state: bans and aggregated security events."""

from __future__ import annotations

import builtins
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import (
    ColumnElement,
    case,
    delete,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.sql.elements import KeyedColumnElement

from ..errors import (
    InvalidInputError,
)
from ..models import (
    BanRow,
    SecurityEvent,
)
from ._sql import _bump_revision_key, _check_page, _clip, _rowcount, _upsert_insert, normalize_ip

if TYPE_CHECKING:
    from ..db import Store


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


def _check_ban_reason(reason: str) -> str:
    value = reason.strip()
    if not value or len(value) > MAX_BAN_REASON or not value.isprintable():
        raise InvalidInputError(f"invalid ban reason: use 1-{MAX_BAN_REASON} printable characters")
    return value


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
