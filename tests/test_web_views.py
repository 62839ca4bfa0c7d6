"""Paging and server-side filtering over tens of thousands of rows, through the real app
(in process, on a real SQLite store): every answer is one page plus the right total."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx

from spitguard.config import Settings
from spitguard.proxy.nat import BEHIND_NAT, EXPOSED
from spitguard.store import Store, open_store
from spitguard.store.models import Binding, Device, FetchLogRow
from spitguard.web import WebContext, create_app

PHONES = 20_000
DEVICES = 20_000


async def _populate(store: Store) -> str:
    await store.tenants.add("big", ["big.test"])
    await store.tenants.add("small", ["small.test"])
    tenant_ids = {t.name: t.id for t in await store.tenants.list()}
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
            "mac": f"0004f2{i:06x}",
            "vendor": "polycom",
            "admin_password_enc": sealed,
            "prov_password_enc": sealed,
            "overrides": {},
            "created_at": now_dt(store),
            "updated_at": now_dt(store),
        }
        for i in range(1, DEVICES + 1)
    ]
    async with store.write() as session:
        await session.run_sync(lambda s: s.bulk_insert_mappings(Binding, bindings))
        await session.run_sync(lambda s: s.bulk_insert_mappings(Device, devices))
    async with store.read() as session:
        ids = dict(
            (
                await session.execute(
                    Device.__table__.select().with_only_columns(Device.mac, Device.id)
                )
            ).all()
        )
    # Every other device fetched its file after its last change: compliant.
    fetched = [
        {
            "device_id": ids[f"0004f2{i:06x}"],
            "mac_requested": f"0004f2{i:06x}",
            "path": f"0004f2{i:06x}.cfg",
            "status": 200,
            "source": "127.0.1.1",
            "at": now + 60,
        }
        for i in range(2, DEVICES + 1, 2)
    ]
    async with store.write() as session:
        await session.run_sync(lambda s: s.bulk_insert_mappings(FetchLogRow, fetched))
    await store.admins.add("op", "operator-pass-123")
    await store.admins.add("small-admin", "small-pass-1234", role="tenant_admin", tenant="small")
    return await store.admins.create_token("op", "scale")


def now_dt(store: Store) -> datetime:
    return datetime.fromtimestamp(store.clock(), UTC)


def test_pages_and_filters_over_tens_of_thousands_of_rows(tmp_path: Path) -> None:
    async def body() -> None:
        settings = Settings(data_dir=tmp_path / "var")
        store = await open_store(settings)
        try:
            token = await _populate(store)
            small = await store.admins.create_token("small-admin", "t")
            app = create_app(WebContext(settings=settings, store=store))
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
                stale = (await c.get("/api/v1/devices", params={"compliant": "false"})).json()
                assert stale["total"] == DEVICES // 2 and len(stale["items"]) == 50
                assert {d["compliance"] for d in stale["items"]} == {"never"}
                good = (await c.get("/api/v1/devices", params={"compliant": "true"})).json()
                assert good["items"][0]["last_fetch"]["status"] == 200
                assert (await c.get("/api/v1/compliance")).json() == {
                    "current": DEVICES // 2,
                    "changed": 0,
                    "never": DEVICES // 2,
                }
                page = await c.get("/registrations", params={"exposed": "true"})
                assert page.status_code == 200
                assert len(re.findall(r"data-aor=", page.text)) == 50
                assert f"{PHONES // 4} in all" in page.text
                dash = await c.get("/")
                assert re.search(r'id="exposed">5000<', dash.text), dash.text[:2000]
                # A tenant admin of another tenant sees none of it.
                other = {"Authorization": f"Bearer {small}"}
                mine = await c.get("/api/v1/registrations", headers=other)
                assert mine.json()["total"] == 0
                assert (await c.get("/api/v1/compliance", headers=other)).json() == {
                    "current": 0,
                    "changed": 0,
                    "never": 0,
                }
        finally:
            await store.close()

    asyncio.run(body())
