"""Paging and server-side filtering over tens of thousands of rows, through the real app
(in process, on a real SQLite store, with the boot server's catalog): every answer is one
page plus the right total, and whole-fleet compliance views stay fast."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import select

from spitguard.config import Settings
from spitguard.provision.inventory import Edge
from spitguard.provision.runtime import ProvisionServer
from spitguard.proxy.nat import BEHIND_NAT, EXPOSED
from spitguard.store import Store, open_store
from spitguard.store.models import Binding, Device, DeviceLine, Domain, FetchLogRow, Line
from spitguard.web import WebContext, create_app
from store_fixtures import NoHooks

PHONES = 20_000
DEVICES = 20_000
BROKEN_MAC = "0004f2ff0000"  # a vendor without a driver: its configuration cannot render
OLD_VERSION = "0" * 64
SLOW = 2.0  # seconds: a whole-fleet view must not take longer (measured: see the report)


def _mac(i: int) -> str:
    return f"0004f2{i:06x}"


async def _populate(store: Store) -> str:
    await store.tenants.add("big", ["big.test"])
    await store.tenants.add("small", ["small.test"])
    tenant_ids = {t.name: t.id for t in await store.tenants.list()}
    async with store.read() as session:
        domain_id = await session.scalar(select(Domain.id).where(Domain.name == "big.test"))
    now = store.clock()
    sealed = store.box.encrypt("x" * 16)
    bindings = [
        {
            "tenant_id": tenant_ids["big"],
            "aor": f"sip:{i}@big.test",
            "contact": f"<sip:{i}@198.51.100.{i % 250}:5060>",
            "call_id": f"c{i}",
            "cseq": 1,
            "expires_at": now + 3600,
            "path": [],
            "transport": "udp",
            "local_host": "127.0.0.1",
            "local_port": 5060,
            "remote_host": f"198.51.100.{i % 250}",
            "remote_port": 5060,
            "conn_id": i,
            "nat_json": {"verdict": EXPOSED if i % 4 == 0 else BEHIND_NAT, "evidence": []},
            "received_at": now,
        }
        for i in range(PHONES)
    ]
    devices = [
        {
            "tenant_id": tenant_ids["big"],
            "mac": _mac(i) if i else BROKEN_MAC,
            "vendor": "polycom" if i else "nophone",
            "admin_password_enc": sealed,
            "prov_password_enc": sealed,
            "overrides": {},
            "created_at": now_dt(store),
            "updated_at": now_dt(store),
        }
        for i in range(DEVICES + 1)
    ]
    lines = [
        {
            "tenant_id": tenant_ids["big"],
            "domain_id": domain_id,
            "aor": f"sip:{i}@big.test",
            "auth_user": str(i),
            "password_enc": sealed,
            "created_at": now_dt(store),
            "updated_at": now_dt(store),
        }
        for i in range(DEVICES + 1)
    ]
    async with store.write() as session:
        await session.run_sync(lambda s: s.bulk_insert_mappings(Binding, bindings))
        await session.run_sync(lambda s: s.bulk_insert_mappings(Device, devices))
        await session.run_sync(lambda s: s.bulk_insert_mappings(Line, lines))
    async with store.read() as session:
        device_ids = dict((await session.execute(select(Device.mac, Device.id))).all())
        line_ids = dict((await session.execute(select(Line.aor, Line.id))).all())
    device_lines = [
        {
            "device_id": device_ids[_mac(i) if i else BROKEN_MAC],
            "line_key": 1,
            "line_id": line_ids[f"sip:{i}@big.test"],
        }
        for i in range(DEVICES + 1)
    ]
    async with store.write() as session:
        await session.run_sync(lambda s: s.bulk_insert_mappings(DeviceLine, device_lines))
    await store.admins.add("op", "operator-pass-123")
    await store.admins.add("small-admin", "small-pass-1234", role="tenant_admin", tenant="small")
    return await store.admins.create_token("op", "scale")


async def _fetch_log(store: Store, boot: ProvisionServer) -> None:
    """Even devices fetched an old version, then the one they should run (compliant); one
    in four fetched only an old one (stale); the rest never fetched their hardened file
    (only the master file, which carries no version of theirs)."""
    async with store.read() as session:
        ids = dict((await session.execute(select(Device.mac, Device.id))).all())
    now = store.clock()
    rows = []
    for i in range(1, DEVICES + 1):
        mac = _mac(i)
        entry = boot.catalog.get(mac)
        desired = None if entry is None else entry.desired()
        assert desired is not None, (mac, entry)
        row = {"device_id": ids[mac], "mac_requested": mac, "status": 200, "source": "127.0.1.1"}
        rows.append({**row, "path": f"{mac}.cfg", "version": None, "at": now + 10})
        if i % 2 == 0 or i % 4 == 1:
            rows.append({**row, "path": desired.path, "version": OLD_VERSION, "at": now + 30})
        if i % 2 == 0:
            rows.append({**row, "path": desired.path, "version": desired.version, "at": now + 60})
    async with store.write() as session:
        await session.run_sync(lambda s: s.bulk_insert_mappings(FetchLogRow, rows))


async def _timed(c: httpx.AsyncClient, url: str, **params: str) -> httpx.Response:
    start = time.perf_counter()
    r = await c.get(url, params=params)
    took = time.perf_counter() - start
    print(f"GET {url} {params}: {took * 1000:.0f} ms")
    assert r.status_code == 200, r.text[:500]
    assert took < SLOW, (url, params, took)
    return r


def now_dt(store: Store) -> datetime:
    return datetime.fromtimestamp(store.clock(), UTC)


def test_pages_and_filters_over_tens_of_thousands_of_rows(tmp_path: Path) -> None:
    async def body() -> None:
        settings = Settings(data_dir=tmp_path / "var")
        store = await open_store(settings)
        try:
            token = await _populate(store)
            small = await store.admins.create_token("small-admin", "t")
            boot = ProvisionServer(
                store, Edge("127.0.0.1"), NoHooks(), secret=b"k" * 32, settings=settings.provision
            )
            start = time.perf_counter()
            await boot.refresh(force=True)
            print(f"catalog of {len(boot.catalog)} devices: {time.perf_counter() - start:.1f} s")
            await _fetch_log(store, boot)
            app = create_app(WebContext(settings=settings, store=store, provision=boot))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://portal.test",
                headers={"Authorization": f"Bearer {token}"},
            ) as c:
                regs = (await c.get("/api/v1/registrations", params={"exposed": "true"})).json()
                assert regs["total"] == PHONES // 4 and len(regs["items"]) == 50
                assert all(r["exposed"] for r in regs["items"])
                last = await c.get(
                    "/api/v1/registrations", params={"offset": PHONES - 10, "limit": 50}
                )
                assert len(last.json()["items"]) == 10
                found = (await c.get("/api/v1/registrations", params={"q": "sip:1234@"})).json()
                assert [r["aor"] for r in found["items"]] == ["sip:1234@big.test"]
                bad = (await _timed(c, "/api/v1/devices", compliant="false")).json()
                assert bad["total"] == DEVICES // 2 + 1 and len(bad["items"]) == 50
                assert {d["compliance"] for d in bad["items"]} == {"stale", "never"}
                stale = (await _timed(c, "/api/v1/devices", compliance="stale")).json()
                assert stale["total"] == DEVICES // 4
                assert stale["items"][0]["compliance_text"] == "runs an old configuration"
                good = (await _timed(c, "/api/v1/devices", compliant="true")).json()
                assert good["total"] == DEVICES // 2
                assert good["items"][0]["last_fetch"]["version"] not in (None, OLD_VERSION)
                broken = (await c.get(f"/api/v1/devices/{BROKEN_MAC}")).json()
                assert broken["compliance"] == "invalid" and "nophone" in broken["problem"]
                assert (await _timed(c, "/api/v1/compliance")).json() == {
                    "compliant": DEVICES // 2,
                    "stale": DEVICES // 4,
                    "never": DEVICES // 4,
                    "invalid": 1,
                }
                devices = await _timed(c, "/devices", compliant="false", offset="5000")
                assert devices.text.count('data-compliance="never"') == 25
                assert devices.text.count('data-compliance="stale"') == 25
                last = await _timed(c, "/devices", offset=str(DEVICES - 10))
                assert "cannot be rendered" in last.text
                page = await c.get("/registrations", params={"exposed": "true"})
                assert page.status_code == 200
                assert len(re.findall(r"data-aor=", page.text)) == 50
                assert f"{PHONES // 4} in all" in page.text
                dash = await _timed(c, "/")
                assert re.search(r'id="exposed">5000<', dash.text), dash.text[:2000]
                assert re.search(rf'id="non-compliant">{DEVICES // 2 + 1}<', dash.text)
                # A tenant admin of another tenant sees none of it.
                other = {"Authorization": f"Bearer {small}"}
                mine = await c.get("/api/v1/registrations", headers=other)
                assert mine.json()["total"] == 0
                assert (await c.get("/api/v1/compliance", headers=other)).json() == {
                    "compliant": 0,
                    "stale": 0,
                    "never": 0,
                    "invalid": 0,
                }
        finally:
            await store.close()

    asyncio.run(body())


def test_without_a_boot_server_compliance_is_a_clear_503_and_the_dashboard_works(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        settings = Settings(data_dir=tmp_path / "var")
        store = await open_store(settings)
        try:
            await store.admins.add("op", "operator-pass-123")
            token = await store.admins.create_token("op", "t")
            app = create_app(WebContext(settings=settings, store=store))
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://portal.test",
                headers={"Authorization": f"Bearer {token}"},
            ) as c:
                r = await c.get("/api/v1/devices")
                assert r.status_code == 503 and "boot server" in r.json()["error"]
                dash = await c.get("/")
                assert dash.status_code == 200 and 'id="non-compliant"' not in dash.text
        finally:
            await store.close()

    asyncio.run(body())
