"""Authenticated configuration fetches per second from the boot server, on one core, side by
side with the same bytes served as static files by the same server (the ceiling).

The server is the real `spitguard serve` (uvicorn + FastAPI inside the edge's process),
pinned to one CPU; the load generator (N worker processes, raw HTTP/1.1 keep-alive, RFC
7616 digest with MD5 computed per request, nonce reused with a rising nc as phones do) is
pinned to another. A `static` route (Starlette StaticFiles over the rendered files written
to disk) is mounted on the same app for the baseline. Sides alternate in rounds
(provision, static, provision, ...); the figure is the median rate.

Then the fleet case: the tenant's profile changes (every desired version changes, the
catalog reloads, every file renders afresh) and each of --phones devices boots as a
Polycom does: `<mac>.cfg`, `spitguard-<mac>.cfg` → 401, again with digest → 200. The
server's CPU time for the whole pass is the "re-provisioned in" figure.

Usage: bench/provision.py [--phones N] [--seconds S] [--rounds N] [--workers N]
                          [--connections N]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_summary, pin_tasks, process_cpu_seconds, result_line

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from edge_server import EDGE_HOST, free_port, spitguard_cmd  # noqa: E402

REALM = "spitguard-provision"
UA = "FileTransport PolycomVVX-VVX_450-UA/6.4.3.5018 Type/Application"
CLIENT_IP = "127.0.1.200"


# --- the server -----------------------------------------------------------------------


def serve(config: str, static_dir: str) -> None:
    """`spitguard serve` plus a static route on the same app (run in a child process)."""
    import uvloop
    from fastapi.staticfiles import StaticFiles

    from spitguard.app import Edge, banner, run
    from spitguard.config import load_settings

    def ready(edge: Edge) -> None:
        assert edge.web is not None
        app = edge.web._server.config.app
        app.mount("/static", StaticFiles(directory=static_dir), name="static")
        print(banner(edge), flush=True)

    # As `spitguard serve` runs it: uvloop, signals handled by the edge.
    profile = os.environ.get("BENCH_PROVISION_PROFILE")  # a path: cProfile stats of the server
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(load_settings(Path(config)), ready=ready))
    if profiler is not None and profile:
        profiler.disable()
        profiler.dump_stats(profile)


async def populate(config: Path, phones: int) -> dict[str, str]:
    """A tenant, one line and one device per phone; MAC → provisioning password."""
    from spitguard.config import load_settings
    from spitguard.store import open_store
    from spitguard.store.repos import DeviceRow

    store = await open_store(load_settings(config))
    try:
        await store.tenants.add("acme", domains=["acme.test"])
        rows = []
        for n in range(phones):
            user = f"{1000 + n}"
            await store.lines.add(f"{user}@acme.test", tenant="acme", password=f"pw-{user}-xyz")
            rows.append(
                DeviceRow(mac=f"0004f2{n:06x}", tenant="acme", lines=[(1, f"{user}@acme.test")])
            )
        await store.devices.import_rows(rows)
        return {
            mac: s.provisioning_password
            for mac, s in (await store.devices.all_credentials()).items()
        }
    finally:
        await store.close()


# --- the client -----------------------------------------------------------------------


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Conn:
    """One keep-alive HTTP/1.1 connection from CLIENT_IP with one digest nonce."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.nonce: str | None = None
        self.nc = 0
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            EDGE_HOST, self.port, local_addr=(CLIENT_IP, 0)
        )

    async def get(self, path: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
        head = f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: {UA}\r\n"
        if auth is not None and self.nonce is not None:
            user, password = auth
            self.nc += 1
            nc, cnonce = f"{self.nc:08x}", "0a4f113b"
            ha1 = _md5(f"{user}:{REALM}:{password}")
            response = _md5(f"{ha1}:{self.nonce}:{nc}:{cnonce}:auth:{_md5(f'GET:{path}')}")
            head += (
                f'Authorization: Digest username="{user}", realm="{REALM}", '
                f'nonce="{self.nonce}", uri="{path}", algorithm=MD5, qop=auth, nc={nc}, '
                f'cnonce="{cnonce}", response="{response}"\r\n'
            )
        self.writer.write((head + "\r\n").encode())
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.lower()
            if name == "content-length":
                length = int(value)
            elif name == "www-authenticate" and "nonce=" in value:
                self.nonce = value.split('nonce="', 1)[1].split('"', 1)[0]
                self.nc = 0
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def fetch(self, mac: str, password: str) -> int:
        """An authenticated fetch of the hardened file (challenge first if no nonce yet)."""
        path = f"/provision/spitguard-{mac}.cfg"
        if self.nonce is None:
            await self.get(path)
        status, _ = await self.get(path, (mac, password))
        if status == 401:  # stale nonce: answer the fresh challenge once
            status, _ = await self.get(path, (mac, password))
        return status


def _worker(
    port: int, side: str, devices: list[tuple[str, str]], seconds: float, conns: int, out: object
) -> None:
    async def run() -> tuple[int, list[float], int]:
        lat: list[float] = []
        done = 0
        errors = 0
        deadline = time.perf_counter() + seconds

        async def loop(k: int) -> None:
            nonlocal done, errors
            c = Conn(port)
            await c.open()
            i = k
            while time.perf_counter() < deadline:
                mac, pw = devices[i % len(devices)]
                i += conns
                t0 = time.perf_counter()
                if side == "static":
                    status, _ = await c.get(f"/static/spitguard-{mac}.cfg")
                else:
                    status = await c.fetch(mac, pw)
                lat.append(time.perf_counter() - t0)
                if status == 200:
                    done += 1
                else:
                    errors += 1
            c.writer.close()

        await asyncio.gather(*(loop(k) for k in range(conns)))
        return done, lat, errors

    result = asyncio.run(run())
    out.put(result)  # type: ignore[attr-defined]


def load(
    port: int, side: str, devices: list[tuple[str, str]], seconds: float, workers: int, conns: int
) -> tuple[float, float, int]:
    """(200s per second, p99 latency in ms, errors) over all workers."""
    queue: multiprocessing.Queue[tuple[int, list[float], int]] = multiprocessing.Queue()
    chunks = [devices[w::workers] for w in range(workers)]
    procs = [
        multiprocessing.Process(target=_worker, args=(port, side, c, seconds, conns, queue))
        for c in chunks
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    ok = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    errors = sum(r[2] for r in results)
    p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan")
    return ok / seconds, p99, errors


async def boot_fleet(port: int, devices: list[tuple[str, str]], conns: int) -> int:
    """Every phone boots once, as a Polycom does; returns how many got their file."""
    queue = list(devices)
    got = 0

    async def one() -> None:
        nonlocal got
        while queue:
            mac, pw = queue.pop()
            c = Conn(port)
            await c.open()
            status, _ = await c.get(f"/provision/{mac}.cfg")
            if status == 200 and await c.fetch(mac, pw) == 200:
                got += 1
            c.writer.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    return got


# --- main -------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phones", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=5.0, help="per timed round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=3, help="load-generator processes")
    ap.add_argument("--connections", type=int, default=8, help="per worker")
    ap.add_argument("--serve", nargs=2, metavar=("CONFIG", "STATIC_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = cpus[0], cpus[-1]
    os.sched_setaffinity(0, {client_cpu})
    with tempfile.TemporaryDirectory(prefix="bench-provision-") as tmp:
        tmpdir = Path(tmp)
        web = free_port()
        config = tmpdir / "edge.toml"
        config.write_text(
            f'data_dir = "{tmpdir / "var"}"\n[sip]\n'
            f'listen = [{{transport = "udp", host = "{EDGE_HOST}", port = {free_port()}}}]\n'
            f"[metrics]\nenabled = false\n[web]\nport = {web}\n"
            "[provision]\nrate_limit = 1000000000\nsweep_unknown_macs = 1000000\n"
        )
        t0 = time.perf_counter()
        passwords = asyncio.run(populate(config, args.phones))
        print(f"inventory: {args.phones} devices added in {time.perf_counter() - t0:.1f} s")
        devices = sorted(passwords.items())
        static = tmpdir / "static"
        static.mkdir()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(config), str(static)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            while b"stop with Ctrl-C" not in proc.stdout.readline():
                if proc.poll() is not None:
                    raise RuntimeError("the server did not start")
            pids = [proc.pid]
            pin_tasks(pids, server_cpu)
            # The static side serves exactly the bytes the boot server renders.
            sample = devices[: min(len(devices), 2000)]

            async def dump() -> None:
                for mac, pw in sample:
                    c = Conn(web)
                    await c.open()
                    await c.fetch(mac, pw)
                    path = f"/provision/spitguard-{mac}.cfg"
                    _, body = await c.get(path, (mac, pw))
                    (static / f"spitguard-{mac}.cfg").write_bytes(body)
                    c.writer.close()

            asyncio.run(dump())
            rates: dict[str, list[float]] = {"provision": [], "static": []}
            per_cpu: dict[str, list[float]] = {"provision": [], "static": []}
            busy: dict[str, list[float]] = {"provision": [], "static": []}
            p99s: dict[str, list[float]] = {"provision": [], "static": []}
            for _ in range(args.rounds):
                for side in ("provision", "static"):
                    cpu0 = process_cpu_seconds(pids)
                    rate, p99, errors = load(
                        web, side, sample, args.seconds, args.workers, args.connections
                    )
                    used = process_cpu_seconds(pids) - cpu0
                    assert errors == 0, f"{side}: {errors} failed requests"
                    rates[side].append(rate)
                    # Fetches per second of server CPU: what one core sustains, whether or
                    # not the load generator kept the server's core busy.
                    per_cpu[side].append(rate * args.seconds / used if used else 0.0)
                    busy[side].append(used / args.seconds)
                    p99s[side].append(p99)

            # The fleet: a profile change re-renders everything, then every phone boots.
            subprocess.run(
                [
                    *spitguard_cmd(),
                    *("device", "profile", "set", "--tenant", "acme", "--web-ui", "on"),
                    *("--config", str(config)),
                ],
                capture_output=True,
                check=True,
            )
            before = process_cpu_seconds(pids)
            wall0 = time.perf_counter()
            got = asyncio.run(boot_fleet(web, devices, args.workers * args.connections))
            wall = time.perf_counter() - wall0
            cpu = process_cpu_seconds(pids) - before
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    ours, theirs = statistics.median(per_cpu["provision"]), statistics.median(per_cpu["static"])
    print(
        "method: real `spitguard serve` pinned to cpu "
        f"{server_cpu}; {args.workers} client processes x {args.connections} keep-alive "
        f"connections from {CLIENT_IP} pinned to cpu {client_cpu}; {args.rounds} rounds of "
        f"{args.seconds:g} s per side, alternating; {len(sample)} devices' files; provision = "
        "GET spitguard-<mac>.cfg with RFC 7616 digest (MD5, nonce reused, nc rising), "
        "rendered and cached per (device, desired version); static = the same bytes from "
        "Starlette StaticFiles mounted on the same app; median rate per side"
    )
    print(f"machine: {machine_summary(server_cpu)} (shared, noisy: compare ratios)")
    for side in ("provision", "static"):
        print(
            f"  {side:<10} {statistics.median(per_cpu[side]):>8,.0f} fetches per server "
            f"CPU-second; {statistics.median(rates[side]):,.0f} fetches/s wall with the "
            f"server core {statistics.median(busy[side]):.0%} busy; p99 "
            f"{statistics.median(p99s[side]):.1f} ms (rounds: "
            + ", ".join(f"{x:,.0f}" for x in per_cpu[side])
            + ")"
        )
    print(f"  ratio      {ours / theirs:.2f}x (provision / static)")
    print(
        f"fleet: {got}/{len(devices)} phones re-provisioned after a profile change "
        f"(master, 401, authenticated fetch; every file rendered afresh) in {cpu:.1f} s of "
        f"server CPU ({wall:.1f} s wall)"
    )
    print(
        result_line(
            "provision",
            ours,
            "fetches/s/core",
            "static",
            theirs,
            wall_fetches_s=round(statistics.median(rates["provision"])),
            p99_ms=round(statistics.median(p99s["provision"]), 1),
            static_p99_ms=round(statistics.median(p99s["static"]), 1),
            phones=len(devices),
            fleet_server_cpu_s=round(cpu, 2),
            fleet_ok=got,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
