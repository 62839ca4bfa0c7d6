"""The boot server's catalog reloads incrementally: after any inventory change the catalog
the running server holds equals one built from nothing, while only the devices whose
inputs changed were rendered again. Reloads never block requests, coalesce, and the
re-sync path still sees every change committed before it asked.

Real SQLite store, frozen clock: a change must be noticed even when no timestamp moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from spitguard.config import Settings
from spitguard.provision import catalog as catalog_module
from spitguard.provision.catalog import Catalog, load_catalog
from spitguard.provision.inventory import Edge
from spitguard.provision.profile import ProvisioningPolling
from spitguard.provision.runtime import ProvisionServer
from spitguard.store import Store, open_store
from spitguard.store.models import Device
from store_fixtures import NoHooks

NOW = 1_700_000_000.0
EDGE = Edge(host="edge.acme.test", trusted_origins=("192.0.2.10",))


def mac(i: int) -> str:
    return f"0004f2{i:06x}"


async def populate(store: Store) -> None:
    """Two tenants; acme's devices 1-5 (device 2 has two lines, devices 3 and 4 share
    line 1003), globex's devices 6-7, and device 8 of a vendor without a driver."""
    await store.tenants.add("acme", ["acme.test"])
    await store.tenants.add("globex", ["globex.test"])
    for user in range(1001, 1007):
        await store.lines.add(f"{user}@acme.test", tenant="acme", password=f"pw-{user}-acme-x")
    for user in range(2001, 2003):
        await store.lines.add(f"{user}@globex.test", tenant="globex", password=f"pw-{user}-gx")
    acme = {1: [(1, "1001@acme.test")], 2: [(1, "1002@acme.test"), (2, "1005@acme.test")]}
    acme |= {3: [(1, "1003@acme.test")], 4: [(1, "1003@acme.test")], 5: [(1, "1004@acme.test")]}
    for i, lines in acme.items():
        await store.devices.add(mac(i), tenant="acme", lines=lines)
    await store.devices.add(mac(6), tenant="globex", lines=[(1, "2001@globex.test")])
    await store.devices.add(mac(7), tenant="globex", lines=[(1, "2002@globex.test")])
    await store.devices.add(mac(8), tenant="acme", lines=[(1, "1006@acme.test")])
    async with store.write() as session:  # written around the store's checks, as by SQL
        await session.execute(update(Device).where(Device.mac == mac(8)).values(vendor="nophone"))


def assert_same(got: Catalog, want: Catalog) -> None:
    assert got.revision == want.revision
    assert list(got.entries) == list(want.entries)
    for key, entry in got.entries.items():
        other = want.entries[key]
        assert entry.device == other.device, key
        assert entry.problem == other.problem, key
        assert entry.config == other.config, key
        assert entry.prov_password == other.prov_password, key
        a, b = entry.desired(), other.desired()
        assert (a is None) == (b is None), key
        if a is not None and b is not None:
            assert (a.path, a.version, a.body) == (b.path, b.version, b.body), key
    assert got.desired_files() == want.desired_files()


def run(
    tmp_path: Path, body: Callable[[Store, ProvisionServer], Awaitable[None]], **kw: Any
) -> None:
    async def main() -> None:
        settings = Settings(data_dir=tmp_path / "var", **kw)
        store = await open_store(settings, clock=lambda: NOW)
        try:
            await populate(store)
            boot = ProvisionServer(
                store, EDGE, NoHooks(), secret=b"k" * 32, settings=settings.provision
            )
            await boot.start()
            try:
                await body(store, boot)
            finally:
                await boot.stop()
        finally:
            await store.close()

    asyncio.run(main())


def test_the_snapshot_reads_what_the_device_queries_read(tmp_path: Path) -> None:
    async def body(store: Store, boot: ProvisionServer) -> None:
        snapshot = await store.devices.snapshot(chunk=3)  # several chunks
        assert [d.info for d in snapshot.devices] == await store.devices.list()
        secrets = await store.devices.all_credentials()
        assert {d.info.mac: store.devices.unseal(d) for d in snapshot.devices} == secrets
        assert snapshot.revision == await store.get_revision()
        assert snapshot.profiles == {t: await store.profiles.get(t) for t in ("acme", "globex")}

    run(tmp_path, body)


async def changed(boot: ProvisionServer, store: Store, rendered: set[int]) -> None:
    """The running server reloads, rendering exactly `rendered` again, and its catalog
    equals one built from nothing."""
    old = boot.catalog
    assert await boot.refresh(force=True)
    new = boot.catalog
    assert new.rendered == len(rendered)
    fresh = {m for m in new.entries if old.entries.get(m) is not new.entries[m]}
    assert fresh == {mac(i) for i in rendered}
    assert_same(new, await load_catalog(store, EDGE))


def test_an_incremental_reload_equals_a_full_one(tmp_path: Path) -> None:
    async def body(store: Store, boot: ProvisionServer) -> None:
        first = boot.catalog
        assert first.rendered == 8 and first.entries[mac(8)].problem is not None
        assert_same(first, await load_catalog(store, EDGE))
        versions = dict(first.desired_files())

        await store.devices.set_overrides(mac(1), {"call.enableOnNotRegistered": "0"})
        await changed(boot, store, {1})
        assert boot.catalog.desired_files()[mac(1)] != versions[mac(1)]

        await store.devices.set_lines(mac(5), [(1, "1004@acme.test"), (3, "1006@acme.test")])
        await changed(boot, store, {5})

        await store.lines.set_password("1005@acme.test", "a-new-password-1")  # device 2's
        await changed(boot, store, {2})

        await store.lines.set_password("1003@acme.test", "a-new-password-2")  # shared
        await changed(boot, store, {3, 4})

        await store.profiles.set("globex", web_ui=True)  # one tenant's devices, only
        await changed(boot, store, {6, 7})

        await store.profiles.set(
            "acme", polling=ProvisioningPolling(mode="rel", period=7200, time=None)
        )
        await changed(boot, store, {1, 2, 3, 4, 5, 8})

        assert await store.devices.delete(mac(3))
        await store.devices.add(mac(9), tenant="globex", lines=[(1, "2001@globex.test")])
        await changed(boot, store, {9})
        assert mac(3) not in boot.catalog.entries

        # Deleted and added again: a new row (and passwords), so a new entry.
        assert await store.devices.delete(mac(4))
        await store.devices.add(mac(4), tenant="acme", lines=[(1, "1003@acme.test")])
        await changed(boot, store, {4})

        # A change that renders the same bytes still gives the device a fresh entry.
        await store.lines.set_password("1001@acme.test", "pw-1001-acme-x")
        await changed(boot, store, {1})

        # Nothing changed: no new catalog.
        assert not await boot.refresh(force=True)

    run(tmp_path, body)


def test_a_new_edge_renders_everything_again(tmp_path: Path) -> None:
    async def body(store: Store, boot: ProvisionServer) -> None:
        edge = Edge(host="edge2.acme.test")
        catalog = await load_catalog(store, edge, boot.catalog)
        assert catalog.rendered == len(catalog) == 8
        assert_same(catalog, await load_catalog(store, edge))

    run(tmp_path, body)


def test_a_reload_yields_the_loop_and_requests_do_not_wait_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_module, "SLICE", 0.0)  # yield after every device

    async def body(store: Store, boot: ProvisionServer) -> None:
        old = boot.catalog
        await store.profiles.set("acme", web_ui=True)
        ticks = 0
        seen: set[int] = set()
        served: list[Catalog] = []

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                seen.add(id(boot.catalog))
                if boot._reload_lock.locked():
                    # A request now does not wait: it is served from the old catalog.
                    assert not await boot.refresh()
                    served.append(boot.catalog)
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        assert await boot.refresh(force=True)
        task.cancel()
        assert ticks - before >= 6  # the loop ran between devices
        assert seen == {id(old)}  # never a half-built catalog
        assert served and all(c is old for c in served)
        assert boot.catalog is not old

    run(tmp_path, body, provision={"reload_interval": 0.001})


def test_concurrent_forced_refreshes_coalesce_and_see_earlier_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = 0
    real = load_catalog

    async def counting(store: Store, edge: Edge, previous: Catalog | None = None) -> Catalog:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)  # a slow reload: others queue behind it
        return await real(store, edge, previous)

    monkeypatch.setattr("spitguard.provision.runtime.load_catalog", counting)

    async def body(store: Store, boot: ProvisionServer) -> None:
        await store.devices.set_overrides(mac(1), {"call.enableOnNotRegistered": "0"})
        first = asyncio.ensure_future(boot.refresh(force=True))
        await asyncio.sleep(0.01)  # the first reload is under way
        # Written while it runs: the re-sync asking now must see it (its phone fetches
        # at once), so one more reload runs, and only one for all who queued.
        await store.devices.set_overrides(mac(2), {"call.enableOnNotRegistered": "0"})
        waiting = [asyncio.ensure_future(boot.refresh(force=True)) for _ in range(5)]
        await asyncio.gather(first, *waiting)
        assert loads == 2
        assert boot.catalog.revision == await store.get_revision()
        assert_same(boot.catalog, await real(store, EDGE))

    run(tmp_path, body)
