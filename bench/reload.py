"""How long the boot server takes to reload its catalog, and how long it blocks the event
loop meanwhile (the SIP edge shares that loop).

In process, on a real SQLite store with N devices (one line each, one tenant): the boot
server's catalog is loaded, then, per round,

* one device changes (its line's password is rotated) and the running boot server
  refreshes (`ProvisionServer.refresh(force=True)`: incremental when it can be), and
* a full reload builds the catalog from nothing (`load_catalog` without a previous one),

each timed, with a ticker task (`asyncio.sleep(0.001)` in a loop) recording the longest
gap between its wake-ups: the longest the loop was blocked. After the first load the
collector is tuned as `spitguard serve` tunes it (`app.tune_gc`: start-up objects frozen,
full collections rare). Figures are medians over the rounds.

Usage: bench/reload.py [--devices N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from _common import machine_summary, pin_to_one_cpu, result_line
from spitguard.app import tune_gc
from spitguard.config import Settings
from spitguard.provision.catalog import load_catalog
from spitguard.provision.inventory import Edge
from spitguard.provision.runtime import ProvisionServer
from spitguard.store import Store, open_store
from spitguard.store.models import Device, DeviceLine, Domain, Line

EDGE = Edge("127.0.0.1")


class NoHooks:
    def is_banned(self, source: str, now: float) -> bool:
        return False

    def ban(self, source: str, reason: str, now: float) -> None:
        pass

    def event(self, source: str, reason: str, now: float, **kw: object) -> None:
        pass


async def populate(store: Store, n: int) -> None:
    """One tenant, n lines and n devices (one line each), inserted in bulk."""
    await store.tenants.add("acme", ["acme.test"])
    tenant_id = (await store.tenants.list())[0].id
    async with store.read() as session:
        domain_id = await session.scalar(select(Domain.id).where(Domain.name == "acme.test"))
    now = datetime.fromtimestamp(store.clock(), UTC)
    sealed = store.box.encrypt("pw-" + "x" * 16)
    common = {"created_at": now, "updated_at": now}
    devices = [
        {
            "tenant_id": tenant_id,
            "mac": f"0004f2{i:06x}",
            "vendor": "polycom",
            "admin_password_enc": sealed,
            "prov_password_enc": sealed,
            "overrides": {},
            **common,
        }
        for i in range(n)
    ]
    lines = [
        {
            "tenant_id": tenant_id,
            "domain_id": domain_id,
            "aor": f"sip:{1000 + i}@acme.test",
            "auth_user": str(1000 + i),
            "password_enc": sealed,
            **common,
        }
        for i in range(n)
    ]
    async with store.write() as session:
        await session.run_sync(lambda s: s.bulk_insert_mappings(Device, devices))
        await session.run_sync(lambda s: s.bulk_insert_mappings(Line, lines))
    async with store.read() as session:
        device_ids = dict((await session.execute(select(Device.mac, Device.id))).all())
        line_ids = dict((await session.execute(select(Line.aor, Line.id))).all())
    links = [
        {
            "device_id": device_ids[f"0004f2{i:06x}"],
            "line_key": 1,
            "line_id": line_ids[f"sip:{1000 + i}@acme.test"],
        }
        for i in range(n)
    ]
    async with store.write() as session:
        await session.run_sync(lambda s: s.bulk_insert_mappings(DeviceLine, links))
    await store.lines.set_password("1000@acme.test", "pw-initial-123456")  # bumps the revision


async def timed(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(seconds the work took, longest event-loop stall in seconds while it ran)."""
    longest = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    gc.collect()
    task = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0.01)  # the ticker runs
    longest = 0.0
    start = time.perf_counter()
    await work()
    took = time.perf_counter() - start
    stop = True
    await task
    return took, longest


async def run(n: int, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {
        "first": [],
        "first_stall": [],
        "incremental": [],
        "incremental_stall": [],
        "full": [],
        "full_stall": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "var")
        store = await open_store(settings)
        try:
            t0 = time.perf_counter()
            await populate(store, n)
            print(f"inventory: {n} devices in {time.perf_counter() - t0:.1f} s")
            boot = ProvisionServer(
                store, EDGE, NoHooks(), secret=b"k" * 32, settings=settings.provision
            )
            took, stall = await timed(lambda: boot.refresh(force=True))
            results["first"].append(took)
            results["first_stall"].append(stall)
            assert len(boot.catalog) == n
            tune_gc()  # as `spitguard serve` does once started
            full_kw: dict[str, Any] = {}
            if "previous" in inspect.signature(load_catalog).parameters:
                full_kw["previous"] = None
            for r in range(rounds):
                await store.lines.set_password(f"{1000 + r + 1}@acme.test", f"pw-round-{r:08d}")
                took, stall = await timed(lambda: boot.refresh(force=True))
                results["incremental"].append(took)
                results["incremental_stall"].append(stall)
                took, stall = await timed(lambda: load_catalog(store, EDGE, **full_kw))
                results["full"].append(took)
                results["full_stall"].append(stall)
        finally:
            await store.close()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cpu = pin_to_one_cpu()
    res = asyncio.run(run(args.devices, args.rounds))
    med = {k: statistics.median(v) for k, v in res.items()}
    print(
        f"method: in process, SQLite store, {args.devices} devices (one line each), pinned "
        f"to cpu {cpu}; per round one line's password changes, then the running boot "
        "server refreshes (after one change) and a catalog is built from nothing (full); "
        "stall = longest gap of a 1 ms ticker task; median of "
        f"{args.rounds} rounds"
    )
    print(f"machine: {machine_summary(cpu)} (shared, noisy)")
    print(
        f"  first load   {med['first']:6.2f} s, loop blocked up to "
        f"{med['first_stall'] * 1000:7.1f} ms"
    )
    print(
        f"  one change   {med['incremental']:6.2f} s, loop blocked up to "
        f"{med['incremental_stall'] * 1000:7.1f} ms (rounds: "
        + ", ".join(f"{x:.2f}" for x in res["incremental"])
        + ")"
    )
    print(
        f"  full reload  {med['full']:6.2f} s, loop blocked up to "
        f"{med['full_stall'] * 1000:7.1f} ms (rounds: "
        + ", ".join(f"{x:.2f}" for x in res["full"])
        + ")"
    )
    print(
        result_line(
            "reload",
            med["incremental"] * 1000,
            "ms",
            "full",
            med["full"] * 1000,
            devices=args.devices,
            incremental_stall_ms=round(med["incremental_stall"] * 1000, 1),
            full_stall_ms=round(med["full_stall"] * 1000, 1),
            first_s=round(med["first"], 2),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
