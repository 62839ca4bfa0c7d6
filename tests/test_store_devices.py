"""Devices, tenant profiles, fetch log and uploads in the store (migration 0003), and the
pure inventory → configuration pieces (desired config, desired version, compliance).

Runs on real SQLite files; set PG_TEST_URL (e.g. postgresql+asyncpg://user@/db?host=/run/pg)
to run the store tests against a PostgreSQL database too (its public schema is wiped).
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, DateTime, LargeBinary, bindparam, text

from spitguard.config import Settings
from spitguard.provision.driver import Weakening
from spitguard.provision.inventory import (
    Edge,
    assess,
    compliance,
    desired_config,
    driver_for,
    edge_from_settings,
    hardened_file,
)
from spitguard.provision.profile import InvalidDeviceConfig, ProvisioningPolling
from spitguard.store import (
    AlreadyExistsError,
    InvalidInputError,
    SecretBox,
    Store,
    UnknownLineError,
    UnknownTenantError,
    load_or_create_key,
)
from spitguard.store.models import Base
from spitguard.store.repos import (
    MAX_UPLOAD_BODY,
    DeviceImportError,
    DeviceInfo,
    DeviceLineInfo,
    DeviceRow,
    DeviceSecrets,
    ProfileInfo,
    UnknownDeviceError,
)
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

MAC = "0004f2abcdef"
LINE_PASSWORD = "Line-Passw0rd-1001"
EDGE = Edge(host="edge.acme.test", port=5060, transport="udp", trusted_origins=("192.0.2.10",))


def is_sqlite(settings: Settings) -> bool:
    return settings.database_url is None


async def inventory(store: Store) -> None:
    """Two tenants: acme with lines 1001-1004, globex with line 2001."""
    await store.tenants.add("acme", ["acme.test"])
    await store.tenants.add("globex", ["globex.test"])
    for user in ("1001", "1002", "1003", "1004"):
        await store.lines.add(f"{user}@acme.test", tenant="acme", password=LINE_PASSWORD)
    await store.lines.add("2001@globex.test", tenant="globex", password=LINE_PASSWORD)


def raw_device_row(settings: Settings, mac: str) -> tuple[bytes, bytes]:
    with sqlite3.connect(settings.data_dir / "spitguard.db") as conn:
        row = conn.execute(
            "SELECT admin_password_enc, prov_password_enc FROM devices WHERE mac = ?", (mac,)
        ).fetchone()
    return bytes(row[0]), bytes(row[1])


# --- migration 0003 -------------------------------------------------------------------------


def test_upgrade_from_0002_keeps_data_and_adds_device_tables(settings: Settings) -> None:
    settings.data_dir.mkdir(mode=0o700)
    box = SecretBox(load_or_create_key(settings))

    def at_0002(conn: Connection) -> None:
        command.upgrade(alembic_config(conn), "0002")
        at = datetime(2024, 12, 2, 10, tzinfo=UTC)
        conn.execute(
            text("INSERT INTO tenants (id, name, created_at) VALUES (1, 'acme', :at)").bindparams(
                bindparam("at", type_=DateTime(timezone=True))
            ),
            {"at": at},
        )
        conn.execute(text("INSERT INTO domains (id, tenant_id, name) VALUES (1, 1, 'acme.test')"))
        conn.execute(
            text(
                "INSERT INTO lines (tenant_id, domain_id, aor, auth_user, password_enc, "
                "created_at, updated_at) VALUES (1, 1, 'sip:1001@acme.test', '1001', :pw, "
                ":at, :at)"
            ).bindparams(
                bindparam("pw", type_=LargeBinary()),
                bindparam("at", type_=DateTime(timezone=True)),
            ),
            {"pw": box.encrypt(LINE_PASSWORD), "at": at},
        )
        conn.execute(text("UPDATE revision SET value = 7 WHERE key = 'inventory'"))

    asyncio.run(on_connection(settings, at_0002))

    async def body(store: Store) -> tuple[Any, ...]:
        before = await store.get_revision()
        device = await store.devices.add(MAC, tenant="acme", lines=[(1, "1001@acme.test")])
        secrets = await store.devices.credentials(MAC)
        assert secrets is not None
        return before, await store.get_revision(), device.lines, secrets.lines[0].password

    revision_before, revision_after, lines, password = with_store(settings, body)
    assert (revision_before, revision_after) == (7, 8)
    assert lines == (DeviceLineInfo(1, "sip:1001@acme.test"),)
    assert password == LINE_PASSWORD

    def check(conn: Connection) -> tuple[str | None, list[Any]]:
        return current_revision(conn), compare_metadata(
            MigrationContext.configure(conn), Base.metadata
        )

    assert asyncio.run(on_connection(settings, check)) == (HEAD, [])


def test_downgrade_to_0002_and_upgrade_again(settings: Settings) -> None:
    async def body(store: Store) -> None:
        await inventory(store)
        await store.devices.add(MAC, tenant="acme", lines=[(1, "1001@acme.test")])
        await store.fetches.record(mac=MAC, path=f"/{MAC}.cfg", status=200, source="127.0.1.10")

    with_store(settings, body)

    def down(conn: Connection) -> str | None:
        command.downgrade(alembic_config(conn), "0002")
        return current_revision(conn)

    assert asyncio.run(on_connection(settings, down)) == "0002"
    assert with_store(settings, lambda s: s.devices.list()) == []
    assert [t.name for t in with_store(settings, lambda s: s.tenants.list())] == ["acme", "globex"]


def test_mac_column_accepts_only_lower_case_hex(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    with_store(settings, inventory)
    with sqlite3.connect(settings.data_dir / "spitguard.db") as conn:
        for bad in ("0004F2ABCDEF", "0004f2abcdeg", "0004f2abcde"):
            with pytest.raises(sqlite3.IntegrityError, match="ck_devices_mac_lower_hex"):
                conn.execute(
                    "INSERT INTO devices (tenant_id, mac, vendor, admin_password_enc, "
                    "prov_password_enc, overrides, created_at, updated_at) "
                    "VALUES (1, ?, 'polycom', x'00', x'00', '{}', '2024-01-01', '2024-01-01')",
                    (bad,),
                )


# --- devices ----------------------------------------------------------------------------------


def test_add_get_list_and_secrets_sealed_at_rest(settings: Settings) -> None:
    async def body(store: Store) -> tuple[DeviceInfo, DeviceSecrets, list[DeviceInfo], int]:
        await inventory(store)
        revision = await store.get_revision()
        device = await store.devices.add(
            "00:04:F2:AB:CD:EF",
            tenant="ACME",
            model=" VVX_400 ",
            label="Front desk",
            lines=[(2, "sip:1002@acme.test"), (1, "1001@ACME.test")],
        )
        await store.devices.add("0004f2000001", tenant="globex", lines=[(1, "2001@globex.test")])
        assert await store.get_revision() == revision + 2
        assert await store.devices.get("0004F2ABCDEF") == device
        assert await store.devices.get("not-a-mac") is None
        assert await store.devices.get("0004f2999999") is None
        secrets = await store.devices.credentials(MAC)
        assert secrets is not None
        assert await store.devices.credentials("0004f2999999") is None
        assert [d.mac for d in await store.devices.list("globex")] == ["0004f2000001"]
        return device, secrets, await store.devices.list(), revision

    device, secrets, listed, _ = with_store(settings, body)
    assert (device.mac, device.tenant, device.vendor) == (MAC, "acme", "polycom")
    assert (device.model, device.label) == ("VVX_400", "Front desk")
    assert device.lines == (
        DeviceLineInfo(1, "sip:1001@acme.test"),
        DeviceLineInfo(2, "sip:1002@acme.test"),
    )
    assert dict(device.overrides) == {}
    assert [(d.tenant, d.mac) for d in listed] == [("acme", MAC), ("globex", "0004f2000001")]

    # Generated, distinct, strong; never in a repr.
    assert secrets.admin_password != secrets.provisioning_password
    for secret in (secrets.admin_password, secrets.provisioning_password):
        assert len(secret) >= 16 and secret.isalnum()
        assert secret not in repr(secrets) and secret not in str(secrets)
    assert [(line.key, line.auth_user, line.password) for line in secrets.lines] == [
        (1, "1001", LINE_PASSWORD),
        (2, "1002", LINE_PASSWORD),
    ]
    assert LINE_PASSWORD not in repr(secrets)

    if is_sqlite(settings):
        admin_enc, prov_enc = raw_device_row(settings, MAC)
        box = SecretBox(load_or_create_key(settings))
        assert secrets.admin_password.encode() not in admin_enc
        assert secrets.provisioning_password.encode() not in prov_enc
        assert box.decrypt(admin_enc) == secrets.admin_password
        assert box.decrypt(prov_enc) == secrets.provisioning_password


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"mac": "0004f2abcde"}, InvalidInputError, "not a MAC address"),
        ({"mac": "000000000000"}, InvalidInputError, "reserved"),
        ({"tenant": "nobody"}, UnknownTenantError, 'tenant "nobody" does not exist'),
        ({"lines": []}, InvalidInputError, "at least one line"),
        ({"lines": [(1, "9999@acme.test")]}, UnknownLineError, "sip:9999@acme.test"),
        (
            {"lines": [(1, "2001@globex.test")]},
            InvalidInputError,
            'belongs to tenant "globex", not to "acme"',
        ),
        (
            {"lines": [(1, "1001@acme.test"), (1, "1002@acme.test")]},
            InvalidInputError,
            "line key 1 is given twice",
        ),
        (
            {"lines": [(1, "1001@acme.test"), (2, "sip:1001@acme.test")]},
            InvalidInputError,
            "given twice",
        ),
        ({"lines": [(0, "1001@acme.test")]}, InvalidInputError, "1..255"),
        ({"lines": [(256, "1001@acme.test")]}, InvalidInputError, "1..255"),
        ({"lines": [(1, "not an aor")]}, InvalidInputError, "invalid AOR"),
        ({"vendor": "yealink"}, InvalidInputError, "unknown vendor 'yealink'"),
        ({"overrides": {"httpd.enabled": "1"}}, InvalidInputError, "web_ui"),
        ({"overrides": {"reg.1.server.1.address": "x"}}, InvalidInputError, "allow-list"),
        ({"overrides": {"httpd.cfg.port": "8080"}}, InvalidInputError, "needs web_ui"),
        ({"overrides": {"sec.pwd.length.user": "99"}}, InvalidInputError, "0..32"),
        ({"label": "x" * 65}, InvalidInputError, "label must be at most 64"),
        ({"model": "VVX\n400"}, InvalidInputError, "model must be at most 64 printable"),
    ],
)
def test_add_refuses_bad_devices(
    settings: Settings, change: dict[str, Any], error: type[Exception], message: str
) -> None:
    args: dict[str, Any] = {"mac": MAC, "tenant": "acme", "lines": [(1, "1001@acme.test")]}
    args.update(change)

    async def body(store: Store) -> None:
        await inventory(store)
        revision = await store.get_revision()
        with pytest.raises(error, match=message):
            await store.devices.add(args.pop("mac"), **args)
        assert await store.devices.list() == []
        assert await store.get_revision() == revision

    with_store(settings, body)


def test_add_refuses_an_existing_mac(settings: Settings) -> None:
    async def body(store: Store) -> None:
        await inventory(store)
        await store.devices.add(MAC, tenant="acme", lines=[(1, "1001@acme.test")])
        with pytest.raises(AlreadyExistsError, match='device "0004f2abcdef" already exists'):
            await store.devices.add(
                "00-04-f2-ab-cd-ef", tenant="globex", lines=[(1, "2001@globex.test")]
            )

    with_store(settings, body)


def test_a_line_may_sit_on_several_devices(settings: Settings) -> None:
    async def body(store: Store) -> None:
        await inventory(store)
        await store.devices.add(MAC, tenant="acme", lines=[(1, "1001@acme.test")])
        other = await store.devices.add(
            "0004f2000001", tenant="acme", lines=[(3, "1001@acme.test")]
        )
        assert other.lines == (DeviceLineInfo(3, "sip:1001@acme.test"),)

    with_store(settings, body)


def test_set_lines_set_overrides_and_delete(settings: Settings) -> None:
    clock = FakeClock()

    async def body(store: Store) -> None:
        await inventory(store)
        added = await store.devices.add(MAC, tenant="acme", lines=[(1, "1001@acme.test")])
        clock.now += 60
        revision = await store.get_revision()
        changed = await store.devices.set_lines(MAC, [(1, "1003@acme.test"), (2, "1004@acme.test")])
        assert [line.aor for line in changed.lines] == ["sip:1003@acme.test", "sip:1004@acme.test"]
        assert changed.updated_at > added.updated_at
        assert await store.get_revision() == revision + 1
        with pytest.raises(InvalidInputError, match="globex"):
            await store.devices.set_lines(MAC, [(1, "2001@globex.test")])
        with pytest.raises(UnknownDeviceError, match='device "0004f2999999" does not exist'):
            await store.devices.set_lines("0004f2999999", [(1, "1001@acme.test")])
        assert (await store.devices.get(MAC)) == changed

        tuned = await store.devices.set_overrides(MAC, {"call.enableOnNotRegistered": "0"})
        assert dict(tuned.overrides) == {"call.enableOnNotRegistered": "0"}
        with pytest.raises(InvalidInputError, match="profile's web_ui"):
            await store.devices.set_overrides(MAC, {"httpd.enabled": "1"})
        assert dict((await store.devices.get(MAC) or tuned).overrides) == dict(tuned.overrides)

        await store.fetches.record(mac=MAC, path=f"/{MAC}.cfg", status=200, source="127.0.1.10")
        await store.uploads.add(MAC, kind="app-log", path=f"/{MAC}-app.log", body=b"log")
        assert await store.devices.delete(MAC)
        assert not await store.devices.delete(MAC)
        assert not await store.devices.delete("nonsense")
        assert await store.devices.get(MAC) is None
        # The fetch log outlives the device (unlinked); its uploads go with it.
        [fetch] = await store.fetches.recent(MAC)
        assert (fetch.mac, fetch.device_id) == (MAC, None)
        assert await store.uploads.list(MAC) == []

    with_store(settings, body, clock)
    if is_sqlite(settings):
        with sqlite3.connect(settings.data_dir / "spitguard.db") as conn:
            assert conn.execute("SELECT count(*) FROM device_uploads").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM device_lines").fetchone() == (0,)


# --- import -----------------------------------------------------------------------------------


def test_import_reports_every_bad_row_and_imports_nothing(settings: Settings) -> None:
    rows = [
        DeviceRow(mac="0004f2000001", tenant="acme", lines=[(1, "1001@acme.test")], source_line=2),
        DeviceRow(mac="zz:zz", tenant="acme", lines=[(1, "1002@acme.test")], source_line=3),
        DeviceRow(mac="0004f2000002", tenant="acme", lines=[(1, "9@acme.test")], source_line=4),
        DeviceRow(
            mac="0004f2000003", tenant="acme", lines=[(1, "2001@globex.test")], source_line=5
        ),
        DeviceRow(mac="0004F2000001", tenant="acme", lines=[(1, "1003@acme.test")], source_line=7),
        DeviceRow(mac="0004f2000004", tenant="acme", lines=[(1, "1004@acme.test")], source_line=8),
    ]

    async def body(store: Store) -> DeviceImportError:
        await inventory(store)
        revision = await store.get_revision()
        with pytest.raises(DeviceImportError) as caught:
            await store.devices.import_rows(rows)
        with pytest.raises(DeviceImportError):
            await store.devices.import_rows(rows, check_only=True)
        assert await store.devices.list() == []
        assert await store.get_revision() == revision
        return caught.value

    error = with_store(settings, body)
    assert str(error) == "4 of 6 rows are bad; nothing was imported"
    assert [(p.line, p.message.split(":")[0]) for p in error.problems] == [
        (3, "not a MAC address"),
        (4, 'line "sip'),
        (5, 'line "sip'),
        (7, 'MAC "0004f2000001" is given twice (first on line 2)'),
    ]
    assert "does not exist" in error.problems[1].message
    assert 'belongs to tenant "globex"' in error.problems[2].message


def test_import_rows_adds_all_in_one_go(settings: Settings) -> None:
    rows = [
        DeviceRow(
            mac=f"0004f200000{i}",
            tenant="acme",
            model="VVX_400",
            label=f"Desk {i}",
            lines=[(1, f"100{i}@acme.test")],
        )
        for i in range(1, 5)
    ]

    async def body(store: Store) -> tuple[list[DeviceInfo], int, int]:
        await inventory(store)
        revision = await store.get_revision()
        assert await store.devices.import_rows(rows, check_only=True) == []
        assert await store.devices.list() == []
        added = await store.devices.import_rows(rows)
        assert await store.devices.import_rows([]) == []
        # Rows naming an existing MAC are bad rows next time.
        with pytest.raises(DeviceImportError, match="4 of 4 rows are bad"):
            await store.devices.import_rows(rows)
        return added, revision, await store.get_revision()

    added, before, after = with_store(settings, body)
    assert [d.mac for d in added] == [r.mac for r in rows]
    assert [d.label for d in added] == ["Desk 1", "Desk 2", "Desk 3", "Desk 4"]
    assert after == before + 1  # one transaction, one bump


# --- profiles ---------------------------------------------------------------------------------


def test_profile_defaults_set_and_web_ui(settings: Settings) -> None:
    async def body(store: Store) -> None:
        await inventory(store)
        assert await store.profiles.get("acme") == ProfileInfo(tenant="acme")
        with pytest.raises(UnknownTenantError):
            await store.profiles.get("nobody")
        revision = await store.get_revision()
        polling = ProvisioningPolling(mode="rel", period=7200, time=None)
        profile = await store.profiles.set(
            "acme", invite_validation="both", polling=polling, resync_reboots=False
        )
        assert (profile.invite_validation, profile.checksync_validation) == ("both", "digest")
        assert (profile.polling, profile.resync_reboots, profile.web_ui) == (polling, False, False)
        assert profile.updated_at == datetime.fromtimestamp(NOW, UTC)
        assert await store.profiles.get("acme") == profile
        assert await store.get_revision() == revision + 1
        assert (await store.profiles.allow_web_ui("acme", True)).web_ui
        assert (await store.profiles.get("acme")).polling == polling
        assert await store.profiles.get("globex") == ProfileInfo(tenant="globex")
        with pytest.raises(InvalidInputError, match="one of source, digest, both"):
            await store.profiles.set("acme", checksync_validation="none")
        with pytest.raises(UnknownTenantError):
            await store.profiles.set("nobody", web_ui=True)

        # A device relying on the web UI blocks switching it off.
        await store.devices.add(
            MAC,
            tenant="acme",
            lines=[(1, "1001@acme.test")],
            overrides={"httpd.cfg.port": "8443"},
        )
        with pytest.raises(InvalidInputError, match=f"device {MAC}: override httpd.cfg.port"):
            await store.profiles.allow_web_ui("acme", False)
        assert (await store.profiles.get("acme")).web_ui
        await store.devices.set_overrides(MAC, {})
        assert not (await store.profiles.allow_web_ui("acme", False)).web_ui

    with_store(settings, body)


# --- fetch log and uploads --------------------------------------------------------------------


def test_fetch_log_record_recent_and_last_success(settings: Settings) -> None:
    clock = FakeClock()

    async def body(store: Store) -> None:
        await inventory(store)
        await store.devices.add(MAC, tenant="acme", lines=[(1, "1001@acme.test")])
        assert await store.fetches.last_success(MAC) is None
        device_file = f"/provision/spitguard-{MAC}.cfg"
        first = await store.fetches.record(
            mac="0004F2ABCDEF",
            path=device_file,
            status=200,
            source="127.0.1.10",
            version="a" * 64,
            user_agent="FileTransport PolycomVVX-VVX_400-UA/4.1.4.7430 Type/Application",
            firmware="4.1.4.7430",
            model="VVX_400",
        )
        assert (first.mac, first.device_id, first.at) == (MAC, 1, NOW)
        clock.now += 10
        await store.fetches.record(
            mac=MAC, path=f"/{MAC}.cfg", status=200, source="127.0.1.10", version="b" * 64
        )
        clock.now += 10
        await store.fetches.record(
            mac=MAC, path=device_file, status=401, source="127.0.1.10", version=None
        )
        await store.fetches.record(
            mac="0004f2999999", path="/0004f2999999.cfg", status=404, source="127.0.66.1"
        )
        await store.fetches.record(
            mac="../etc/passwd", path="/../etc/passwd", status=404, source="127.0.66.1", at=1.0
        )
        # Latest success of any file, then of the hardened file only (case-insensitive).
        assert await store.fetches.last_success(MAC) == ("b" * 64, NOW + 10)
        assert await store.fetches.last_success(MAC, path=f"SPITGUARD-{MAC}.cfg") == (
            "a" * 64,
            NOW,
        )
        assert await store.fetches.last_success("0004f2999999") is None
        assert await store.fetches.last_success("nonsense") is None

        recent = await store.fetches.recent()
        assert [(f.mac, f.status) for f in recent] == [
            ("0004f2999999", 404),
            (MAC, 401),
            (MAC, 200),
            (MAC, 200),
            ("../etc/passwd", 404),
        ]
        assert recent[0].device_id is None
        assert [f.status for f in await store.fetches.recent(MAC, limit=2)] == [401, 200]
        assert [f.path for f in await store.fetches.recent("0004f2999999")] == ["/0004f2999999.cfg"]
        with pytest.raises(InvalidInputError):
            await store.fetches.recent(limit=0)
        assert await store.fetches.purge_before(NOW) == 1
        assert len(await store.fetches.recent()) == 4

    with_store(settings, body, clock)


def test_fetch_log_clips_what_the_network_sends(settings: Settings) -> None:
    async def body(store: Store) -> None:
        fetch = await store.fetches.record(
            mac="x" * 500,
            path="/" + "p" * 1000,
            status=404,
            source="127.0.66.1",
            user_agent="u" * 1000,
            firmware="f" * 100,
            model="m" * 100,
        )
        assert (len(fetch.mac), len(fetch.path), len(fetch.user_agent or "")) == (64, 512, 256)
        [stored] = await store.fetches.recent()
        assert stored == fetch

    with_store(settings, body)


def test_uploads_add_and_list(settings: Settings) -> None:
    clock = FakeClock()

    async def body(store: Store) -> None:
        await inventory(store)
        await store.devices.add(MAC, tenant="acme", lines=[(1, "1001@acme.test")])
        weakening = (
            Weakening("httpd.enabled", "turns the phone's web server back on", "1"),
            Weakening("device.auth.localAdminPassword", "the admin password was changed", None),
        )
        first = await store.uploads.add(
            MAC,
            kind="phone-overrides",
            path=f"/{MAC}-phone.cfg",
            body=b"<x/>",
            weakening=weakening,
        )
        assert (first.size, first.truncated, first.weakening) == (4, False, weakening)
        clock.now += 1
        big = b"L" * (MAX_UPLOAD_BODY + 10)
        log = await store.uploads.add(MAC, kind="app-log", path=f"/{MAC}-app.log", body=big)
        assert (log.size, len(log.body), log.truncated) == (len(big), MAX_UPLOAD_BODY, True)
        assert "LLLL" not in repr(log)
        listed = await store.uploads.list("00:04:f2:ab:cd:ef")
        assert [u.kind for u in listed] == ["app-log", "phone-overrides"]
        assert listed[1] == first
        with pytest.raises(UnknownDeviceError):
            await store.uploads.add("0004f2999999", kind="app-log", path="/x", body=b"")
        with pytest.raises(InvalidInputError, match="not a MAC address"):
            await store.uploads.list("zz")

    with_store(settings, body, clock)


# --- desired configuration, version and compliance -------------------------------------------


def _device(**change: Any) -> DeviceInfo:
    base = DeviceInfo(
        id=1,
        mac=MAC,
        tenant="acme",
        vendor="polycom",
        model="VVX_400",
        label=None,
        lines=(DeviceLineInfo(1, "sip:1001@acme.test"),),
        overrides={},
        created_at=datetime.fromtimestamp(NOW, UTC),
        updated_at=datetime.fromtimestamp(NOW, UTC),
    )
    return replace(base, **change)


def _secrets(**change: Any) -> DeviceSecrets:
    from spitguard.store.repos import DeviceLineSecret

    line = DeviceLineSecret(1, "sip:1001@acme.test", "1001", "Front desk", LINE_PASSWORD)
    base = DeviceSecrets(MAC, "Admin-Passw0rd-xyz", "Prov-Passw0rd-xyz", (line,))
    return replace(base, **change)


def _version(profile: ProfileInfo, edge: Edge = EDGE, **secrets: Any) -> str:
    config = desired_config(_device(), profile, _secrets(**secrets), edge)
    return hardened_file(driver_for("polycom"), config).version


def test_desired_config_maps_the_inventory() -> None:
    profile = ProfileInfo(tenant="acme", invite_validation="both", resync_reboots=True)
    config = desired_config(_device(), profile, _secrets(), EDGE)
    assert (config.mac, config.vendor, config.model) == (MAC, "polycom", "VVX_400")
    [line] = config.lines
    assert (line.key, line.aor, line.auth_user, line.password, line.display_name) == (
        1,
        "1001@acme.test",
        "1001",
        LINE_PASSWORD,
        "Front desk",
    )
    hardening = config.profile
    assert hardening.origins == ("edge.acme.test", "192.0.2.10")
    assert (hardening.invite_validation, hardening.checksync_validation) == ("both", "digest")
    assert (hardening.web_ui, hardening.resync_reboots) == (False, True)
    assert hardening.admin_password == "Admin-Passw0rd-xyz"
    rendered = hardened_file(driver_for("polycom"), config)
    assert rendered.path == f"spitguard-{MAC}.cfg" and rendered.sensitive
    body = rendered.body.decode()
    assert 'httpd.enabled="0"' in body and 'reg.1.address="1001@acme.test"' in body
    # Credentials missing for a line: no half-configured phone.
    with pytest.raises(InvalidDeviceConfig, match="line key 1"):
        desired_config(_device(), profile, _secrets(lines=()), EDGE)


def test_desired_version_follows_profile_edge_and_secrets() -> None:
    strict = ProfileInfo(tenant="acme")
    base = _version(strict)
    assert _version(strict) == base  # stable: same inputs, same bytes
    assert _version(replace(strict, web_ui=True)) != base
    assert _version(replace(strict, checksync_validation="source")) != base
    assert _version(strict, replace(EDGE, host="edge2.acme.test")) != base
    assert _version(strict, replace(EDGE, trusted_origins=("192.0.2.10", "192.0.2.11"))) != base
    assert _version(strict, admin_password="Other-Admin-Passw0rd") != base
    # The provisioning password is not in the file, so it does not change the version.
    assert _version(strict, provisioning_password="Other-Prov-Passw0rd") == base


def test_edge_from_settings_uses_the_advertised_host_and_listen_hosts() -> None:
    default = edge_from_settings(Settings())
    assert default == Edge("127.0.0.1", 5060, "udp", ("127.0.0.1",))
    settings = Settings(
        sip={  # type: ignore[arg-type]
            "listen": ["tcp:0.0.0.0:5070", "udp:0.0.0.0:5080", "udp:192.0.2.10:5090"],
            "advertised_host": "edge.acme.test",
        }
    )
    # Wildcard addresses are left out: a phone cannot trust "any address".
    assert edge_from_settings(settings) == Edge(
        "edge.acme.test", 5080, "udp", ("edge.acme.test", "192.0.2.10")
    )


def test_compliance_states() -> None:
    assert compliance("a" * 64, None) == "never"
    assert compliance("a" * 64, "a" * 64) == "compliant"
    assert compliance("a" * 64, "b" * 64) == "stale"


def test_assess_follows_fetches_and_profile_changes(settings: Settings) -> None:
    clock = FakeClock()

    async def body(store: Store) -> None:
        await inventory(store)
        device = await store.devices.add(MAC, tenant="acme", lines=[(1, "1001@acme.test")])
        never = await assess(store, device, EDGE)
        assert (never.state, never.last_version) == ("never", None)
        assert never.desired_version is not None and never.path == f"spitguard-{MAC}.cfg"
        await store.fetches.record(
            mac=MAC,
            path=f"/provision/{never.path}",
            status=200,
            source="127.0.1.10",
            version=never.desired_version,
        )
        fetched = await assess(store, device, EDGE)
        assert (fetched.state, fetched.last_at) == ("compliant", NOW)
        # The master file fetched later does not count against the device file.
        clock.now += 5
        await store.fetches.record(
            mac=MAC, path=f"/{MAC}.cfg", status=200, source="127.0.1.10", version="0" * 64
        )
        assert (await assess(store, device, EDGE)).state == "compliant"
        await store.profiles.allow_web_ui("acme", True)
        stale = await assess(store, device, EDGE)
        assert stale.state == "stale" and stale.desired_version != never.desired_version
        assert stale.last_version == never.desired_version
        assert (await assess(store, device, replace(EDGE, host="edge2.acme.test"))).state == (
            "stale"
        )

    with_store(settings, body, clock)
