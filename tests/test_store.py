"""The store on real SQLite files: migrations, inventory CRUD, sealed passwords, bindings."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import create_engine

from spitguard.config import Settings
from spitguard.store import (
    AlreadyExistsError,
    BindingRecord,
    InvalidInputError,
    SecretKeyError,
    Store,
    UnknownLineError,
    UnknownTenantError,
    load_or_create_key,
    open_store,
    parse_aor,
)
from spitguard.store.models import Base

# The newest migration: tests check that opening a store brings the schema to it.
HEAD = sorted(
    p.stem.split("_", 1)[0]
    for p in (
        Path(__file__).resolve().parents[1]
        / "src"
        / "spitguard"
        / "store"
        / "migrations"
        / "versions"
    ).glob("[0-9]*_*.py")
)[-1]

T = TypeVar("T")
PASSWORD = "Plaintext-Passw0rd-4711"
TABLES = {"tenants", "domains", "lines", "bindings", "revision", "alembic_version"}


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path / "var", **overrides)  # type: ignore[arg-type]


def with_store(
    settings: Settings,
    body: Callable[[Store], Awaitable[T]],
    clock: Callable[[], float] | None = None,
) -> T:
    async def run() -> T:
        store = await (open_store(settings) if clock is None else open_store(settings, clock=clock))
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def db_path(settings: Settings) -> Path:
    return settings.data_dir / "spitguard.db"


def raw_query(settings: Settings, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db_path(settings)) as conn:
        return conn.execute(sql).fetchall()


async def acme(store: Store) -> None:
    await store.tenants.add("acme", ["acme.example.com", "ACME.example.org."])


# --- migrations ---------------------------------------------------------------------------


def test_migrations_create_the_schema_from_empty(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    assert not s.data_dir.exists()
    revision = with_store(s, lambda store: store.get_revision())
    assert revision == 0
    assert stat.S_IMODE(s.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(db_path(s).stat().st_mode) == 0o600
    tables = {row[0] for row in raw_query(s, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables >= TABLES
    assert raw_query(s, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert raw_query(s, "PRAGMA journal_mode") == [("wal",)]
    [(domains_sql,)] = raw_query(s, "SELECT sql FROM sqlite_master WHERE name = 'domains'")
    assert "CONSTRAINT ck_domains_name_lower_case CHECK" in str(domains_sql)


def test_migrations_are_idempotent_and_keep_data(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    with_store(s, acme)
    schema = raw_query(s, "SELECT sql FROM sqlite_master ORDER BY name")
    assert with_store(s, lambda store: store.tenants.list())[0].name == "acme"
    assert raw_query(s, "SELECT sql FROM sqlite_master ORDER BY name") == schema
    assert raw_query(s, "SELECT version_num FROM alembic_version") == [(HEAD,)]


@pytest.mark.parametrize("attempt", range(5))
def test_concurrent_first_opens_agree(tmp_path: Path, attempt: int) -> None:
    """Server and CLI starting together on a fresh file: WAL switch and migration race."""
    s = settings_for(tmp_path)
    s.data_dir.mkdir()
    load_or_create_key(s)

    async def run() -> list[int]:
        stores = await asyncio.gather(*(open_store(s) for _ in range(4)))
        try:
            return [await st.get_revision() for st in stores]
        finally:
            for st in stores:
                await st.close()

    assert asyncio.run(run()) == [0, 0, 0, 0]
    assert raw_query(s, "SELECT version_num FROM alembic_version") == [(HEAD,)]


def test_migrations_match_the_models(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    with_store(s, lambda store: store.get_revision())
    engine = create_engine(f"sqlite:///{db_path(s)}")
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    s = settings_for(tmp_path)

    async def body(store: Store) -> None:
        with pytest.raises(AlreadyExistsError, match="conflicts with existing data"):
            await store.bindings.upsert(binding(tenant_id=999))

    with_store(s, body)


# --- tenants and domains ------------------------------------------------------------------


def test_tenant_add_list_get_and_domain_lookup(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    clock = FakeClock()

    async def body(store: Store) -> None:
        added = await store.tenants.add("ACME", ["acme.example.com", "ACME.example.org."])
        assert added.name == "acme"
        assert added.domains == ("acme.example.com", "acme.example.org")
        assert added.created_at.timestamp() == clock.now
        await store.tenants.add("globex", ["globex.example.com"])
        tenants = await store.tenants.list()
        assert [t.name for t in tenants] == ["acme", "globex"]
        assert tenants[0].domains == ("acme.example.com", "acme.example.org")
        assert tenants[0].created_at.tzinfo is not None
        got = await store.tenants.get("Acme")
        assert got is not None and got.id == added.id
        assert await store.tenants.get("nobody") is None
        found = await store.tenants.find_by_domain("ACME.EXAMPLE.ORG")
        assert found is not None and found.name == "acme"
        assert await store.tenants.find_by_domain("unknown.example.com") is None
        assert await store.tenants.find_by_domain("not a domain") is None

    with_store(s, body, clock)
    assert raw_query(s, "SELECT name FROM domains ORDER BY name") == [
        ("acme.example.com",),
        ("acme.example.org",),
        ("globex.example.com",),
    ]


def test_tenant_errors(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await acme(store)
        with pytest.raises(AlreadyExistsError, match=r'^tenant "acme" already exists$'):
            await store.tenants.add("acme", ["other.example.com"])
        with pytest.raises(
            AlreadyExistsError,
            match=r'^domain "acme.example.com" already belongs to tenant "acme"$',
        ):
            await store.tenants.add("globex", ["globex.example.com", "Acme.Example.com"])
        with pytest.raises(InvalidInputError, match="needs at least one SIP domain"):
            await store.tenants.add("globex", [])
        with pytest.raises(InvalidInputError, match="invalid tenant name"):
            await store.tenants.add("no spaces", ["x.example.com"])
        with pytest.raises(InvalidInputError, match="invalid SIP domain"):
            await store.tenants.add("globex", ["under_score.example.com"])
        # The failed attempts left nothing behind.
        assert [t.name for t in await store.tenants.list()] == ["acme"]
        assert await store.tenants.find_by_domain("globex.example.com") is None

    with_store(settings_for(tmp_path), body)


# --- lines ------------------------------------------------------------------------------


def test_line_add_get_list_and_directory(tmp_path: Path) -> None:
    s = settings_for(tmp_path)

    async def body(store: Store) -> None:
        await acme(store)
        await store.tenants.add("globex", ["globex.example.com"])
        line = await store.lines.add(
            "1001@ACME.example.com", tenant="acme", password=PASSWORD, display_name=" Desk "
        )
        assert (line.aor, line.auth_user, line.domain, line.tenant) == (
            "sip:1001@acme.example.com",
            "1001",
            "acme.example.com",
            "acme",
        )
        assert line.display_name == "Desk"
        await store.lines.add(
            "sips:1002@acme.example.org", tenant="acme", password=PASSWORD, auth_user="u1002"
        )
        await store.lines.add("sip:2001@globex.example.com", tenant="globex", password="x" * 12)

        got = await store.lines.get("sip:1001@acme.example.com")
        assert got == line
        assert await store.lines.get("9999@acme.example.com") is None
        by_auth = await store.lines.get_by_auth("u1002", "ACME.example.org")
        assert by_auth is not None and by_auth.aor == "sip:1002@acme.example.org"
        assert await store.lines.get_by_auth("1002", "acme.example.org") is None

        assert [x.aor for x in await store.lines.list()] == [
            "sip:1001@acme.example.com",
            "sip:1002@acme.example.org",
            "sip:2001@globex.example.com",
        ]
        assert [x.aor for x in await store.lines.list("globex")] == ["sip:2001@globex.example.com"]
        with pytest.raises(UnknownTenantError, match=r'^tenant "nobody" does not exist$'):
            await store.lines.list("nobody")

        directory = await store.lines.load_directory()
        assert {(e.aor, e.auth_user, e.domain, e.password) for e in directory} == {
            ("sip:1001@acme.example.com", "1001", "acme.example.com", PASSWORD),
            ("sip:1002@acme.example.org", "u1002", "acme.example.org", PASSWORD),
            ("sip:2001@globex.example.com", "2001", "globex.example.com", "x" * 12),
        }
        assert all(PASSWORD not in repr(e) for e in directory)

    with_store(s, body)


def test_line_errors(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await acme(store)
        await store.tenants.add("globex", ["globex.example.com"])
        await store.lines.add("1001@acme.example.com", tenant="acme", password=PASSWORD)
        with pytest.raises(UnknownTenantError, match=r'^tenant "nope" does not exist$'):
            await store.lines.add("1002@acme.example.com", tenant="nope", password=PASSWORD)
        with pytest.raises(InvalidInputError, match=r'belongs to tenant "globex"'):
            await store.lines.add("1002@globex.example.com", tenant="acme", password=PASSWORD)
        with pytest.raises(InvalidInputError, match=r"its domains are: acme\.example\.com"):
            await store.lines.add("1002@elsewhere.example.com", tenant="acme", password=PASSWORD)
        with pytest.raises(
            AlreadyExistsError, match=r'^line "sip:1001@acme.example.com" already exists$'
        ):
            await store.lines.add("SIP:1001@Acme.Example.Com", tenant="acme", password=PASSWORD)
        with pytest.raises(AlreadyExistsError, match=r'auth user "1001" is already used'):
            await store.lines.add(
                "1002@acme.example.com", tenant="acme", password=PASSWORD, auth_user="1001"
            )
        for bad_aor in ("acme.example.com", "1002@", "1002@acme.example.com:5060", "tel:1002"):
            with pytest.raises(InvalidInputError, match="invalid AOR"):
                await store.lines.add(bad_aor, tenant="acme", password=PASSWORD)
        with pytest.raises(InvalidInputError, match="too short") as info:
            await store.lines.add("1003@acme.example.com", tenant="acme", password="abc12")
        assert "abc12" not in str(info.value)
        with pytest.raises(UnknownLineError, match=r'^line "sip:9@acme.example.com" does not'):
            await store.lines.set_password("9@acme.example.com", PASSWORD)
        assert [x.aor for x in await store.lines.list()] == ["sip:1001@acme.example.com"]

    with_store(settings_for(tmp_path), body)


def test_aor_with_password_is_refused_without_echoing_it() -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_aor("sip:1001:TopSecret@acme.example.com")
    assert "TopSecret" not in str(info.value)


def test_set_password(tmp_path: Path) -> None:
    clock = FakeClock()

    async def body(store: Store) -> None:
        await acme(store)
        added = await store.lines.add("1001@acme.example.com", tenant="acme", password=PASSWORD)
        clock.now += 60
        changed = await store.lines.set_password("sip:1001@acme.example.com", "N3w-password!")
        assert changed.updated_at.timestamp() == clock.now
        assert changed.created_at == added.created_at
        [entry] = await store.lines.load_directory()
        assert entry.password == "N3w-password!"

    with_store(settings_for(tmp_path), body, clock)


# --- secrets ------------------------------------------------------------------------------


def test_passwords_are_encrypted_at_rest(tmp_path: Path) -> None:
    s = settings_for(tmp_path)

    async def body(store: Store) -> None:
        await acme(store)
        await store.lines.add("1001@acme.example.com", tenant="acme", password=PASSWORD)

    with_store(s, body)
    [(sealed,)] = raw_query(s, "SELECT password_enc FROM lines")
    assert isinstance(sealed, bytes)
    assert PASSWORD.encode() not in sealed
    key = s.secret_key_file.read_bytes().strip()
    assert Fernet(key).decrypt(sealed) == PASSWORD.encode()
    for path in s.data_dir.iterdir():  # the database, its WAL, the key: nowhere in clear
        assert PASSWORD.encode() not in path.read_bytes(), path


def test_key_is_generated_private_and_reused(tmp_path: Path) -> None:
    s = settings_for(tmp_path)

    async def add(store: Store) -> None:
        await acme(store)
        await store.lines.add("1001@acme.example.com", tenant="acme", password=PASSWORD)

    with_store(s, add)
    key_file = s.secret_key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    directory = with_store(s, lambda store: store.lines.load_directory())
    assert key_file.read_bytes() == key
    assert directory[0].password == PASSWORD

    async def box_repr(store: Store) -> str:
        return repr(store.box)

    assert with_store(s, box_repr) == "SecretBox(<key hidden>)"


def test_configured_key_is_used_and_wrong_key_is_reported(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    s = settings_for(tmp_path, secret_key=SecretStr(key))

    async def add(store: Store) -> None:
        await acme(store)
        await store.lines.add("1001@acme.example.com", tenant="acme", password=PASSWORD)

    with_store(s, add)
    assert not s.secret_key_file.exists()
    assert load_or_create_key(s) == key.encode()

    other = settings_for(tmp_path, secret_key=SecretStr(Fernet.generate_key().decode()))
    with pytest.raises(SecretKeyError, match="not the one the passwords were encrypted with"):
        with_store(other, lambda store: store.lines.load_directory())


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    load_or_create_key(s)
    os.chmod(s.secret_key_file, 0o644)
    with pytest.raises(SecretKeyError, match="chmod 600"):
        load_or_create_key(s)


# --- bindings -----------------------------------------------------------------------------


def binding(**changes: object) -> BindingRecord:
    base = BindingRecord(
        tenant_id=1,
        aor="sip:1001@acme.example.com",
        contact="<sip:1001@127.0.1.1:5060;transport=udp>",
        instance='"<urn:uuid:00000000-0000-1000-8000-000000000001>"',
        reg_id=1,
        call_id="call-1@127.0.1.1",
        cseq=1,
        expires_at=1000.0,
        q=0.5,
        path=("<sip:edge.example.net;lr>",),
        transport="udp",
        local_host="127.0.0.1",
        local_port=5060,
        remote_host="127.0.1.1",
        remote_port=5060,
        conn_id=7,
        user_agent="PolycomVVX-VVX_350-UA/6.4.0",
        nat={"behind_nat": False, "evidence": ["via matches source"]},
        received_at=900.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_bindings_upsert_load_delete_purge(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await acme(store)
        first = binding()
        await store.bindings.upsert(first)
        assert await store.bindings.load_all() == [first]

        # Same (aor, contact): replaced, not duplicated.
        refreshed = binding(cseq=2, expires_at=2000.0, remote_port=5062, nat={"behind_nat": True})
        await store.bindings.upsert(refreshed)
        assert await store.bindings.load_all() == [refreshed]

        second = binding(contact="<sip:1001@127.0.1.2:5060>", expires_at=500.0)
        other_aor = binding(aor="sip:1002@acme.example.com", expires_at=3000.0)
        await store.bindings.upsert(second)
        await store.bindings.upsert(other_aor)
        assert len(await store.bindings.load_all()) == 3

        assert await store.bindings.purge_expired(500.0) == 1  # `second`, expiring exactly now
        assert {b.contact for b in await store.bindings.load_all()} == {first.contact}
        assert await store.bindings.delete(first.aor, "<sip:nobody@127.0.1.9>") is False
        assert await store.bindings.delete(first.aor, first.contact) is True
        assert await store.bindings.load_all() == [other_aor]
        await store.bindings.upsert(refreshed)
        assert await store.bindings.delete_for_aor("sip:1002@acme.example.com") == 1
        assert await store.bindings.load_all() == [refreshed]

    with_store(settings_for(tmp_path), body)


def test_bindings_survive_reopen(tmp_path: Path) -> None:
    s = settings_for(tmp_path)

    async def body(store: Store) -> None:
        await acme(store)
        await store.bindings.upsert(binding())

    with_store(s, body)
    assert with_store(s, lambda store: store.bindings.load_all()) == [binding()]


# --- revision -----------------------------------------------------------------------------


def test_revision_bumps_on_inventory_writes_only(tmp_path: Path) -> None:
    async def body(store: Store) -> list[int]:
        seen = [await store.get_revision()]
        await acme(store)
        seen.append(await store.get_revision())
        await store.lines.add("1001@acme.example.com", tenant="acme", password=PASSWORD)
        seen.append(await store.get_revision())
        await store.lines.set_password("1001@acme.example.com", "An0ther-password")
        seen.append(await store.get_revision())
        with pytest.raises(AlreadyExistsError):  # a refused write changes nothing
            await store.tenants.add("acme", ["x.example.com"])
        await store.bindings.upsert(binding())  # registrations are not inventory
        await store.lines.list()
        seen.append(await store.get_revision())
        return seen

    assert with_store(settings_for(tmp_path), body) == [0, 1, 2, 3, 3]


def test_revision_is_seen_by_another_open_store(tmp_path: Path) -> None:
    s = settings_for(tmp_path)

    async def run() -> tuple[int, int]:
        server = await open_store(s)
        cli = await open_store(s)
        try:
            before = await server.get_revision()
            await acme(cli)
            return before, await server.get_revision()
        finally:
            await cli.close()
            await server.close()

    assert asyncio.run(run()) == (0, 1)
