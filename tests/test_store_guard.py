"""Guard state in the store: migration 0002, bans, aggregated security events.

Runs on real SQLite files; set PG_TEST_URL (e.g. postgresql+asyncpg://user@/db?host=/run/pg)
to run the same tests against a PostgreSQL database too (its public schema is wiped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, DateTime, bindparam, event, text

from spitguard.config import Settings
from spitguard.guard.bans import Ban, BanList
from spitguard.guard.events import EventAggregator, EventRecord
from spitguard.store import InvalidInputError, Store
from spitguard.store.models import Base
from spitguard.store.repos import BANS_REVISION_KEY
from store_fixtures import (
    HEAD,
    NOW,
    FakeClock,
    alembic_config,
    current_revision,
    on_connection,
    settings_fixture,  # noqa: F401 (the `settings` fixture)
    with_store,
)

MINUTE = int(NOW // 60)
INVITE = b"INVITE sip:100@127.0.1.10 SIP/2.0\r\nUser-Agent: friendly-scanner\r\n\r\n"


def rec(
    source: str = "127.0.66.1",
    reason: str = "scanner",
    minute: int = MINUTE,
    *,
    count: int = 1,
    at: float | None = None,
    action: str = "drop",
    sample: bytes = INVITE,
    **more: Any,
) -> EventRecord:
    seen = minute * 60 + 1.0 if at is None else at
    return EventRecord(source, reason, minute, count, seen, seen, action, "udp", sample, **more)


# --- migration 0002 -------------------------------------------------------------------------


def test_upgrade_from_0001_keeps_inventory_and_adds_guard_tables(settings: Settings) -> None:
    settings.data_dir.mkdir(mode=0o700)

    def at_0001(conn: Connection) -> None:
        command.upgrade(alembic_config(conn), "0001")
        insert_tenant = text(
            "INSERT INTO tenants (id, name, created_at) VALUES (1, 'acme', :at)"
        ).bindparams(bindparam("at", type_=DateTime(timezone=True)))
        conn.execute(insert_tenant, {"at": datetime(2024, 11, 25, 10, tzinfo=UTC)})
        conn.execute(text("INSERT INTO domains (tenant_id, name) VALUES (1, 'acme.example.com')"))
        conn.execute(text("UPDATE revision SET value = 7 WHERE key = 'inventory'"))

    asyncio.run(on_connection(settings, at_0001))

    async def body(store: Store) -> tuple[Any, ...]:
        tenants = await store.tenants.list()
        await store.bans.add_manual("127.0.66.1", duration=60)
        await store.events.add_batch([rec()])
        return (
            [t.name for t in tenants],
            await store.get_revision(),
            await store.get_revision(BANS_REVISION_KEY),
            len(await store.events.tail()),
        )

    assert with_store(settings, body, FakeClock()) == (["acme"], 7, 1, 1)
    assert asyncio.run(on_connection(settings, current_revision)) == HEAD


def test_migrations_from_empty_match_the_models(settings: Settings) -> None:
    assert with_store(settings, lambda s: s.get_revision(BANS_REVISION_KEY), FakeClock()) == 0

    def check(conn: Connection) -> tuple[str | None, list[Any]]:
        return current_revision(conn), compare_metadata(
            MigrationContext.configure(conn), Base.metadata
        )

    assert asyncio.run(on_connection(settings, check)) == (HEAD, [])


def test_downgrade_to_0001_and_upgrade_again(settings: Settings) -> None:
    with_store(settings, lambda s: s.bans.add_manual("127.0.66.1", duration=60), FakeClock())

    def down(conn: Connection) -> list[Any]:
        command.downgrade(alembic_config(conn), "0001")
        return list(conn.execute(text("SELECT key FROM revision ORDER BY key")))

    assert asyncio.run(on_connection(settings, down)) == [("inventory",)]
    clock = FakeClock()
    assert with_store(settings, lambda s: s.bans.list(NOW, include_expired=True), clock) == []


# --- bans ---------------------------------------------------------------------------------


def test_ban_upsert_get_list_and_load_active(settings: Settings) -> None:
    clock = FakeClock()

    async def body(store: Store) -> None:
        bans = BanList()
        auto = bans.ban("127.0.66.1", "scanner", NOW)  # a real guard Ban: 300 s, level 1
        info = await store.bans.upsert(auto)
        assert (info.source, info.until, info.level, info.manual) == (
            "127.0.66.1",
            NOW + 300,
            1,
            False,
        )
        assert info.updated_at == NOW
        expired = Ban("127.0.66.2", NOW - 1, 2, "flood", NOW - 3600)
        await store.bans.upsert(expired)
        assert await store.bans.get("127.0.66.1") == info
        assert await store.bans.get("127.0.66.9") is None
        assert [b.source for b in await store.bans.load_active(NOW)] == ["127.0.66.1"]
        assert [b.source for b in await store.bans.list(NOW)] == ["127.0.66.1"]
        everything = await store.bans.list(NOW, include_expired=True)
        assert [b.source for b in everything] == ["127.0.66.1", "127.0.66.2"]
        # Replacing escalates in place: still one row per source.
        clock.now = NOW + 10
        again = await store.bans.upsert(replace(auto, until=NOW + 3600, level=2))
        assert (again.level, again.until, again.updated_at) == (2, NOW + 3600, NOW + 10)
        assert len(await store.bans.list(NOW, include_expired=True)) == 2
        # What the edge restores at start: back into a BanList as guard Bans.
        restored = BanList()
        for b in await store.bans.load_active(NOW):
            restored.add(Ban(b.source, b.until, b.level, b.reason, b.created_at, b.manual))
        assert restored.is_banned("127.0.66.1", NOW + 3599)

    with_store(settings, body, clock)


def test_ban_delete_and_purge_expired(settings: Settings) -> None:
    async def body(store: Store) -> None:
        for i, until in enumerate((NOW - 10, NOW, NOW + 10)):
            await store.bans.upsert(Ban(f"127.0.66.{i}", until, 1, "scanner", NOW - 100))
        assert await store.bans.delete("127.0.66.2") is True
        assert await store.bans.delete("127.0.66.2") is False
        assert await store.bans.purge_expired(NOW) == 2  # until <= now is expired
        assert await store.bans.list(NOW, include_expired=True) == []
        assert await store.bans.purge_expired(NOW) == 0

    with_store(settings, body, FakeClock())


def test_bans_revision_bumps_on_manual_changes_only(settings: Settings) -> None:
    async def body(store: Store) -> list[int]:
        seen = [await store.get_revision(BANS_REVISION_KEY)]
        await store.bans.upsert(Ban("127.0.66.1", NOW + 60, 1, "scanner", NOW))  # the edge
        await store.bans.delete("127.0.66.1")
        await store.bans.purge_expired(NOW)
        seen.append(await store.get_revision(BANS_REVISION_KEY))
        await store.bans.add_manual("127.0.66.2", duration=3600, reason="svwar")
        seen.append(await store.get_revision(BANS_REVISION_KEY))
        assert await store.bans.remove_manual("127.0.66.9") is False  # nothing changed
        seen.append(await store.get_revision(BANS_REVISION_KEY))
        assert await store.bans.remove_manual("127.0.66.2") is True
        seen.append(await store.get_revision(BANS_REVISION_KEY))
        await store.bans.upsert(Ban("127.0.66.3", NOW + 60, 1, "x", NOW), manual_change=True)
        seen.append(await store.get_revision(BANS_REVISION_KEY))
        assert await store.get_revision() == 0  # the inventory counter is separate
        return seen

    assert with_store(settings, body, FakeClock()) == [0, 0, 1, 1, 2, 3]


def test_manual_ban_input_is_checked_and_normalized(settings: Settings) -> None:
    async def body(store: Store) -> None:
        ban = await store.bans.add_manual(" [::0001] ", duration=90, reason=" ops ")
        assert (ban.source, ban.until, ban.reason, ban.manual) == ("::1", NOW + 90, "ops", True)
        assert await store.bans.remove_manual("0:0:0:0:0:0:0:1") is True
        with pytest.raises(InvalidInputError, match=r"invalid IP address '10\.0\.0\.0/8'"):
            await store.bans.add_manual("10.0.0.0/8", duration=60)
        with pytest.raises(InvalidInputError, match="duration"):
            await store.bans.add_manual("127.0.66.1", duration=0)
        with pytest.raises(InvalidInputError, match="reason"):
            await store.bans.add_manual("127.0.66.1", duration=60, reason="a\x1b[31m")
        with pytest.raises(InvalidInputError, match="reason"):
            await store.bans.add_manual("127.0.66.1", duration=60, reason="x" * 65)
        assert await store.bans.list(NOW, include_expired=True) == []
        assert await store.get_revision(BANS_REVISION_KEY) == 2

    with_store(settings, body, FakeClock())


# --- events: merging ----------------------------------------------------------------------


def test_batches_for_the_same_key_merge(settings: Settings) -> None:
    async def body(store: Store) -> None:
        first = rec(count=3, at=NOW + 5, method="INVITE")
        first.first_seen = NOW + 2
        assert await store.events.add_batch([first]) == 1
        later = rec(count=4, at=NOW + 30, action="ban", sample=b"OPTIONS later")
        later.first_seen = NOW + 1  # another node saw one earlier
        later.user_agent = "friendly-scanner"
        await store.events.add_batch([later])
        [row] = await store.events.tail()
        assert row.count == 7
        assert (row.first_seen, row.last_seen) == (NOW + 1, NOW + 30)
        assert row.action == "ban"
        assert row.sample == INVITE  # the first sample stays
        assert (row.method, row.user_agent) == ("INVITE", "friendly-scanner")
        await store.events.add_batch([rec(action="reject", at=NOW + 40)])
        [row] = await store.events.tail()
        assert (row.count, row.action, row.last_seen) == (8, "ban", NOW + 40)  # ban sticks

    with_store(settings, body, FakeClock())


def test_empty_sample_is_filled_and_drop_is_upgraded_to_ban(settings: Settings) -> None:
    async def body(store: Store) -> None:
        await store.events.add_batch([rec(sample=b"")])
        await store.events.add_batch([rec(action="ban", sample=b"REGISTER x")])
        [row] = await store.events.tail()
        assert (row.count, row.action, row.sample) == (2, "ban", b"REGISTER x")

    with_store(settings, body, FakeClock())


def test_different_minutes_reasons_and_sources_stay_separate(settings: Settings) -> None:
    async def body(store: Store) -> None:
        await store.events.add_batch(
            [
                rec(),
                rec(minute=MINUTE + 1),
                rec(reason="flood"),
                rec(source="127.0.66.2"),
                rec(),  # merges with the first
            ]
        )
        await store.events.add_batch([rec(minute=MINUTE + 1)])
        rows = await store.events.tail()
        keys = {(r.source, r.reason, r.minute): r.count for r in rows}
        assert keys == {
            ("127.0.66.1", "scanner", MINUTE): 2,
            ("127.0.66.1", "scanner", MINUTE + 1): 2,
            ("127.0.66.1", "flood", MINUTE): 1,
            ("127.0.66.2", "scanner", MINUTE): 1,
        }
        assert await store.events.size_estimate() == 4

    with_store(settings, body, FakeClock())


def test_store_grows_with_aggregation_not_packets(settings: Settings) -> None:
    """10,000 records for 3 keys (as several edge flushes would hand them over): 3 rows."""
    sources = ("127.0.66.1", "127.0.66.2", "127.0.66.3")
    records = [
        rec(sources[i % 3], at=NOW + i / 1000, action="ban" if i == 9_999 else "drop")
        for i in range(10_000)
    ]

    async def body(store: Store) -> None:
        inserts = count_inserts(store)
        with inserts:
            assert await store.events.add_batch(records) == 3
            await store.events.add_batch(records[:3])
        assert inserts.count == 2  # one statement per batch, not per record
        rows = {r.source: r for r in await store.events.tail()}
        assert {s: r.count for s, r in rows.items()} == {
            "127.0.66.1": 3335,
            "127.0.66.2": 3334,
            "127.0.66.3": 3334,
        }
        assert rows["127.0.66.1"].action == "ban"  # record 9999 went to source 0
        assert rows["127.0.66.1"].first_seen == NOW
        assert rows["127.0.66.1"].last_seen == NOW + 9.999
        assert await store.events.size_estimate() == 3

    with_store(settings, body, FakeClock())


def test_large_batches_are_chunked(settings: Settings) -> None:
    records = [rec(f"127.0.66.{i % 250}", minute=MINUTE + i // 250) for i in range(1_200)]

    async def body(store: Store) -> None:
        inserts = count_inserts(store)
        with inserts:
            assert await store.events.add_batch(records) == 1_200
        assert inserts.count == 3  # 500 + 500 + 200 rows
        assert await store.events.size_estimate() == 1_200
        assert await store.events.add_batch([]) == 0

    with_store(settings, body, FakeClock())


def test_scanner_supplied_text_is_clipped_to_the_columns(settings: Settings) -> None:
    async def body(store: Store) -> None:
        await store.events.add_batch(
            [rec(method="X" * 100, user_agent="u" * 300, target="t" * 300)]
        )
        [row] = await store.events.tail()
        assert (len(row.method or ""), len(row.user_agent or ""), len(row.target or "")) == (
            32,
            200,
            200,
        )

    with_store(settings, body, FakeClock())


def test_aggregator_records_land_redacted(settings: Settings) -> None:
    agg = EventAggregator()
    raw = (
        b'REGISTER sip:127.0.0.1 SIP/2.0\r\nAuthorization: Digest username="100", '
        b'realm="x", nonce="abc", response="0123456789abcdef"\r\n\r\n'
    )
    for i in range(5):
        agg.record("127.0.66.7", "auth_flood", NOW + i, action="drop", transport="udp", raw=raw)

    async def body(store: Store) -> None:
        await store.events.add_batch(agg.take())
        [row] = await store.events.tail()
        assert row.count == 5
        assert b"0123456789abcdef" not in row.sample
        assert b'username="100"' in row.sample
        assert "0123456789abcdef" not in repr(row)  # the sample stays out of reprs

    with_store(settings, body, FakeClock())


class count_inserts:  # lower case: reads like a function at the call site
    """Counts INSERT statements sent to the database while active."""

    def __init__(self, store: Store) -> None:
        self.engine = store.engine.sync_engine
        self.count = 0

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO SECURITY_EVENTS"):
            self.count += 1

    def __enter__(self) -> count_inserts:
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


# --- events: reading ----------------------------------------------------------------------


def populate() -> list[EventRecord]:
    """Three hours of events: ids 1..6 in this order."""
    return [
        rec("127.0.66.1", "scanner", MINUTE, count=5, at=NOW + 10),
        rec("127.0.66.2", "scanner", MINUTE, count=1, at=NOW + 20),
        rec("127.0.66.1", "flood", MINUTE + 60, count=50, at=NOW + 3600 + 5),
        rec("127.0.66.3", "scanner", MINUTE + 61, count=2, at=NOW + 3660 + 5),
        rec("127.0.66.1", "scanner", MINUTE + 120, count=7, at=NOW + 7200 + 5),
        rec("127.0.66.2", "sanity", MINUTE + 121, count=3, at=NOW + 7260 + 5),
    ]


@pytest.fixture
def events_store(settings: Settings) -> Iterator[Settings]:
    async def body(store: Store) -> None:
        for r in populate():  # one batch each, so ids follow this order
            await store.events.add_batch([r])

    with_store(settings, body, FakeClock())
    yield settings


def test_tail_newest_last_paging_and_filters(events_store: Settings) -> None:
    async def body(store: Store) -> None:
        tail = store.events.tail
        assert [e.id for e in await tail()] == [1, 2, 3, 4, 5, 6]
        assert [e.id for e in await tail(limit=2)] == [5, 6]
        assert [e.id for e in await tail(limit=2, after_id=2)] == [3, 4]
        assert [e.id for e in await tail(after_id=6)] == []
        assert [e.id for e in await tail(reason="scanner")] == [1, 2, 4, 5]
        assert [e.id for e in await tail(source="127.0.66.1", limit=2)] == [3, 5]
        assert [e.id for e in await tail(source="127.0.66.1", reason="scanner")] == [1, 5]
        one = await store.events.get(4)
        assert one is not None
        assert (one.source, one.count, one.sample) == ("127.0.66.3", 2, INVITE)
        assert await store.events.get(99) is None
        with pytest.raises(InvalidInputError):
            await tail(limit=0)

    with_store(events_store, body, FakeClock())


def test_query_by_time_reason_source_with_pages(events_store: Settings) -> None:
    async def body(store: Store) -> None:
        query = store.events.query
        assert [e.id for e in await query()] == [6, 5, 4, 3, 2, 1]  # newest first
        assert [e.id for e in await query(since=NOW + 20)] == [6, 5, 4, 3, 2]
        assert [e.id for e in await query(since=NOW + 21)] == [6, 5, 4, 3]
        assert [e.id for e in await query(until=NOW + 3600 + 5)] == [2, 1]  # until excluded
        assert [e.id for e in await query(since=NOW + 3600, until=NOW + 7200)] == [4, 3]
        assert [e.id for e in await query(reason="scanner", source="127.0.66.1")] == [5, 1]
        assert [e.id for e in await query(limit=2, offset=1)] == [5, 4]
        assert [e.id for e in await query(limit=2, offset=6)] == []

    with_store(events_store, body, FakeClock())


def test_aggregates_sum_counts(events_store: Settings) -> None:
    async def body(store: Store) -> None:
        events = store.events
        assert await events.by_reason(0) == [("flood", 50), ("scanner", 15), ("sanity", 3)]
        assert await events.by_reason(NOW + 7200) == [("scanner", 7), ("sanity", 3)]
        assert await events.by_source(0) == [
            ("127.0.66.1", 62),
            ("127.0.66.2", 4),
            ("127.0.66.3", 2),
        ]
        assert await events.by_source(0, limit=1) == [("127.0.66.1", 62)]
        hour = int(NOW // 3600) * 3600  # NOW is 22:13:20: the first events are in hour 22
        assert await events.by_hour(0) == [(hour, 6), (hour + 3600, 52), (hour + 7200, 10)]
        assert await events.by_hour(NOW + 3600) == [(hour + 3600, 52), (hour + 7200, 10)]
        assert await events.by_hour(NOW + 99_999) == []

    with_store(events_store, body, FakeClock())


def test_retention_purge(events_store: Settings) -> None:
    async def body(store: Store) -> None:
        assert await store.events.purge_before(NOW + 20) == 1  # last seen NOW+10
        assert await store.events.purge_before(NOW + 3600 + 5) == 1  # NOW+20; NOW+3605 stays
        assert await store.events.size_estimate() == 4
        assert await store.events.purge_before(NOW + 99_999) == 4
        assert await store.events.tail() == []

    with_store(events_store, body, FakeClock())
