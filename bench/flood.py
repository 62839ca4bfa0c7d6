"""Flood benchmark: a scanner flood from many loopback sources against the running edge,
while SIPp places legitimate calls from the trunk to a registered phone at 50 calls/s.

Runs twice, side by side: `userspace` (the guard drops everything in Python) and
`offload` (the same edge with `firewall.nftables = "on"`: bans go into nftables). The
offload run puts the edge, SIPp, the generator and nft into a network namespace the
benchmark creates, so the host's ruleset is never touched; both runs use loopback only.

Reports, per mode:
- the legitimate call success rate (SIPp's own counters),
- the userspace drop rate: messages the edge's guard dropped or banned per second, on
  the edge's one pinned core (read from its Prometheus counters before and after),
- what the generator offered (packets/s) and what the kernel dropped before the edge
  could read them (UDP receive-buffer errors from /proc/net/snmp),
- how much the event store grew (database files), which must follow the aggregation
  (sources x reasons x minutes), not the number of packets.

Last line: {"bench": "flood", "value": dropped/s in userspace, "unit": "pkt/s",
"baseline": "offered", "baseline_value": offered/s, "ratio": dropped/offered,
"legit_success": .. (offload, the default where nft works), "legit_success_userspace": ..,
"kernel_drops": .., "store_growth_bytes": .. (the larger of the two runs)}.
Loopback only: edge 127.0.0.1, phone 127.0.1.2, trunk 127.0.2.1, flood sources
127.0.66.x-127.0.69.x.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "tests"))
sys.path.insert(0, str(HERE.parent))

from _common import machine_summary, pin_tasks, result_line  # noqa: E402
from corpus import read  # noqa: E402
from edge_server import DOMAIN, EDGE_HOST, USERS, free_port, running_edge  # noqa: E402
from netns import enter, exec_prefix, http_get_in, netns, sh  # noqa: E402
from peers import UPSTREAM_IP, phone_ip  # noqa: E402
from peers.sipp import Sipp  # noqa: E402

EDGE_CPU = 0
LOAD_CPU = 1
LEGIT_CPS = 50


def flood(port: int, seconds: float, sources: int, counter: Any, took: Any, ns: str | None) -> None:
    """Send scanner probes round-robin from `sources` loopback addresses, as fast as
    one process can, for `seconds`."""
    os.sched_setaffinity(0, {LOAD_CPU})
    if ns is not None:
        enter(ns)
    payloads = [
        read("scanners", "svmap_v03_options.sip"),
        read("scanners", "sipcli_v18_invite.sip"),
        read("scanners", "svwar_v03_register.sip"),
    ]
    socks = []
    for i in range(sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.{66 + i // 250}.{1 + i % 250}", 0))
        s.setblocking(False)
        socks.append(s)
    target = (EDGE_HOST, port)
    sent = 0
    start = time.monotonic()
    deadline = start + seconds
    n = len(socks)
    while time.monotonic() < deadline:
        for _ in range(256):
            with contextlib.suppress(BlockingIOError):
                socks[sent % n].sendto(payloads[sent % 3], target)
            sent += 1
    took.value = time.monotonic() - start
    counter.value = sent
    for s in socks:
        s.close()


def metrics(port: int, ns: str | None) -> dict[str, float]:
    if ns is not None:
        text = http_get_in(ns, EDGE_HOST, port, "/metrics")
    else:
        text = urllib.request.urlopen(f"http://{EDGE_HOST}:{port}/metrics", timeout=5).read()
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def dropped(m: dict[str, float]) -> float:
    return sum(
        v
        for k, v in m.items()
        if k.startswith("spitguard_packets_total") and 'verdict="pass"' not in k
    )


def udp_rcvbuf_errors(ns: str | None) -> int:
    # Per network namespace: read it from inside the benchmark's own.
    if ns is not None:
        text = sh(*exec_prefix(ns), "cat", "/proc/net/snmp").stdout
    else:
        text = Path("/proc/net/snmp").read_text()
    lines = text.splitlines()
    udp = [ln.split() for ln in lines if ln.startswith("Udp:")]
    header, values = udp[0], udp[1]
    return int(values[header.index("RcvbufErrors")])


def store_size(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("spitguard.db*") if p.is_file())


def run(seconds: float, sources: int, ns: str | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="spitguard-flood-") as tmp:
        tmp_path = Path(tmp)
        metrics_port = free_port()
        extra = f"[metrics]\nport = {metrics_port}\n[guard]\nevents_flush_interval = 1.0\n"
        wrap: list[str] = []
        if ns is not None:
            extra += '[firewall]\nnftables = "on"\n'
            wrap = exec_prefix(ns)
        with running_edge(tmp_path, trusted=[f"{UPSTREAM_IP}/32"], extra=extra, wrap=wrap) as edge:
            assert edge.proc is not None
            pin_tasks([edge.proc.pid], EDGE_CPU)
            os.sched_setaffinity(0, {LOAD_CPU})  # SIPp children inherit the load core
            calls = int(LEGIT_CPS * seconds)
            common = {
                "remote": edge.addr,
                "workdir": tmp_path / "sipp",
                "timeout": seconds + 30,
                "wrap": wrap,
            }
            phone = Sipp(
                "uas_register_answer.xml",
                local_ip=phone_ip(2),
                user="bob",
                password=USERS["bob"],
                keys={"domain": DOMAIN},
                variables={"calls": str(calls)},
                ooc_scenario="uas_answer.xml",
                name="phone",
                **common,  # type: ignore[arg-type]
            ).start()
            phone.wait_registered(10)
            time.sleep(1.5)  # let the registration be written before measuring growth
            size0 = store_size(edge.data_dir)
            m0 = metrics(metrics_port, ns)
            rcv0 = udp_rcvbuf_errors(ns)
            counter = mp.Value("q", 0)
            took = mp.Value("d", 0.0)
            gen = mp.Process(
                target=flood, args=(edge.udp_port, seconds, sources, counter, took, ns)
            )
            gen.start()
            trunk = Sipp(
                "upstream_call.xml",
                local_ip=UPSTREAM_IP,
                user="+15550001111",
                service="bob",
                calls=calls,
                rate=LEGIT_CPS,
                call_duration_ms=100,
                keys={"domain": DOMAIN},
                name="trunk",
                **common,  # type: ignore[arg-type]
            ).start()
            gen.join(seconds + 30)
            # The flood window: what the guard dropped while the generator ran (the edge
            # may still be draining its socket buffer for a moment; that is counted too).
            m1 = metrics(metrics_port, ns)
            rcv1 = udp_rcvbuf_errors(ns)
            result = trunk.wait(seconds + 60)
            elapsed = float(took.value)
            time.sleep(2.5)  # one more event flush
            size1 = store_size(edge.data_dir)
            m2 = metrics(metrics_port, ns)
            phone.stop()
            stats = result.stats
            ok = stats.successful if stats else 0
            failed = stats.failed if stats else calls
            return {
                "seconds": elapsed,
                "offered": counter.value,
                "dropped": dropped(m1) - dropped(m0),
                "kernel_dropped": rcv1 - rcv0,
                "calls": calls,
                "calls_ok": ok,
                "calls_failed": failed,
                "bans": m2.get("spitguard_bans_active", 0.0),
                "kernel_drops": m2.get("spitguard_kernel_drops_total", 0.0),
                "events_dropped": m2.get("spitguard_events_dropped_total", 0.0),
                "store_growth": size1 - size0,
                "events_written": m2.get("spitguard_events_written_total", 0.0)
                - m0.get("spitguard_events_written_total", 0.0),
            }


def report(mode: str, r: dict[str, Any]) -> dict[str, float]:
    dur = float(r["seconds"])
    rates = {
        "offered": float(r["offered"]) / dur,
        "dropped": float(r["dropped"]) / dur,
        "success": float(r["calls_ok"]) / max(1, int(r["calls"])),
    }
    print(f"[{mode}] {r['offered']:,} packets over {dur:.1f} s")
    print(f"  offered            {rates['offered']:12,.0f} pkt/s")
    print(f"  dropped by guard   {rates['dropped']:12,.0f} pkt/s  (userspace, one core)")
    print(f"  dropped by nft     {int(r['kernel_drops']):12,} packets (kernel ban sets)")
    print(f"  kernel rcvbuf drop {int(r['kernel_dropped']):12,} packets (never reached the edge)")
    print(f"  legit calls        {r['calls_ok']}/{r['calls']} ok, {r['calls_failed']} failed")
    print(f"  active bans        {r['bans']:.0f}; events written {r['events_written']:.0f}")
    print(
        f"  event store growth {r['store_growth']:,} bytes; events lost to the bound "
        f"{r['events_dropped']:.0f}"
    )
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--sources", type=int, default=1000, help="flood source addresses")
    ap.add_argument("--quick", action="store_true", help="a short smoke run")
    ap.add_argument("--mode", choices=("both", "userspace", "offload"), default="both")
    args = ap.parse_args(argv)
    seconds = 5.0 if args.quick else args.seconds
    sources = min(args.sources, 1000)
    print(machine_summary(EDGE_CPU))
    print(
        f"flood: scanner packets (svmap OPTIONS, sipcli INVITE, svwar REGISTER) from "
        f"{sources} loopback sources for {seconds:.0f} s, one generator process on CPU "
        f"{LOAD_CPU}; edge pinned to CPU {EDGE_CPU}; SIPp trunk 127.0.2.1 -> edge -> "
        f"registered SIPp phone at {LEGIT_CPS} calls/s (SIPp on CPU {LOAD_CPU} too)."
    )
    results: dict[str, dict[str, Any]] = {}
    rates: dict[str, dict[str, float]] = {}
    if args.mode in ("both", "userspace"):
        results["userspace"] = run(seconds, sources, None)
        rates["userspace"] = report("userspace", results["userspace"])
    if args.mode in ("both", "offload"):
        with netns() as ns:
            results["offload"] = run(seconds, sources, ns)
        rates["offload"] = report(
            "offload (nftables in the benchmark's own netns)", results["offload"]
        )
    main_rates = rates.get("userspace") or rates["offload"]
    extra: dict[str, object] = {
        "legit_success": round(rates.get("offload", main_rates)["success"], 4),
        "store_growth_bytes": max(int(r["store_growth"]) for r in results.values()),
    }
    if "userspace" in rates:
        extra["legit_success_userspace"] = round(rates["userspace"]["success"], 4)
    if "offload" in results:
        extra["kernel_drops"] = int(results["offload"]["kernel_drops"])
    print(
        result_line(
            "flood",
            value=main_rates["dropped"],
            unit="pkt/s",
            baseline="offered",
            baseline_value=main_rates["offered"],
            **extra,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
