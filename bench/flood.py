"""Flood benchmark: a scanner flood from many loopback sources against the running edge,
while SIPp places legitimate calls from the trunk to a registered phone at 50 calls/s.

Reports, side by side in one run:
- the legitimate call success rate (SIPp's own counters),
- the userspace drop rate: messages the edge's guard dropped or banned per second, on
  the edge's one pinned core (read from its Prometheus counters before and after),
- what the generator offered (packets/s) and what the kernel dropped before the edge
  could read them (UDP receive-buffer errors from /proc/net/snmp),
- how much the event store grew (database files), which must follow the aggregation
  (sources x reasons x minutes), not the number of packets.

Last line: {"bench": "flood", "value": dropped/s, "unit": "pkt/s", "baseline": "offered",
"baseline_value": offered/s, "ratio": dropped/offered, "legit_success": ..,
"store_growth_bytes": ..}. Loopback only: edge 127.0.0.1, phone 127.0.1.2, trunk
127.0.2.1, flood sources 127.0.66.x-127.0.69.x.
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
from peers import UPSTREAM_IP, phone_ip  # noqa: E402
from peers.sipp import Sipp  # noqa: E402

EDGE_CPU = 0
LOAD_CPU = 1
LEGIT_CPS = 50


def flood(port: int, seconds: float, sources: int, counter: Any, took: Any) -> None:
    """Send scanner probes round-robin from `sources` loopback addresses, as fast as
    one process can, for `seconds`."""
    os.sched_setaffinity(0, {LOAD_CPU})
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


def metrics(port: int) -> dict[str, float]:
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


def udp_rcvbuf_errors() -> int:
    lines = Path("/proc/net/snmp").read_text().splitlines()
    udp = [ln.split() for ln in lines if ln.startswith("Udp:")]
    header, values = udp[0], udp[1]
    return int(values[header.index("RcvbufErrors")])


def store_size(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("spitguard.db*") if p.is_file())


def run(seconds: float, sources: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="spitguard-flood-") as tmp:
        tmp_path = Path(tmp)
        metrics_port = free_port()
        extra = f"[metrics]\nport = {metrics_port}\n[guard]\nevents_flush_interval = 1.0\n"
        with running_edge(tmp_path, trusted=[f"{UPSTREAM_IP}/32"], extra=extra) as edge:
            assert edge.proc is not None
            pin_tasks([edge.proc.pid], EDGE_CPU)
            os.sched_setaffinity(0, {LOAD_CPU})  # SIPp children inherit the load core
            calls = int(LEGIT_CPS * seconds)
            common = {"remote": edge.addr, "workdir": tmp_path / "sipp", "timeout": seconds + 30}
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
            m0 = metrics(metrics_port)
            rcv0 = udp_rcvbuf_errors()
            counter = mp.Value("q", 0)
            took = mp.Value("d", 0.0)
            gen = mp.Process(target=flood, args=(edge.udp_port, seconds, sources, counter, took))
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
            m1 = metrics(metrics_port)
            rcv1 = udp_rcvbuf_errors()
            result = trunk.wait(seconds + 60)
            elapsed = float(took.value)
            time.sleep(2.5)  # one more event flush
            size1 = store_size(edge.data_dir)
            m2 = metrics(metrics_port)
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
                "events_dropped": m2.get("spitguard_events_dropped_total", 0.0),
                "store_growth": size1 - size0,
                "events_written": m2.get("spitguard_events_written_total", 0.0)
                - m0.get("spitguard_events_written_total", 0.0),
            }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--sources", type=int, default=1000, help="flood source addresses")
    ap.add_argument("--quick", action="store_true", help="a short smoke run")
    args = ap.parse_args(argv)
    seconds = 5.0 if args.quick else args.seconds
    r = run(seconds, min(args.sources, 1000))
    dur = float(r["seconds"])  # type: ignore[arg-type]
    offered = float(r["offered"]) / dur  # type: ignore[arg-type]
    dropped_ps = float(r["dropped"]) / dur  # type: ignore[arg-type]
    success = float(r["calls_ok"]) / max(1, int(r["calls"]))  # type: ignore[call-overload]
    print(machine_summary(EDGE_CPU))
    print(
        f"flood: {r['offered']:,} scanner packets (svmap OPTIONS, sipcli INVITE, svwar "
        f"REGISTER) from {min(args.sources, 1000)} loopback sources over {dur:.1f} s, one "
        f"generator process on CPU {LOAD_CPU}; edge pinned to CPU {EDGE_CPU}; SIPp trunk "
        f"127.0.2.1 -> edge -> registered SIPp phone at {LEGIT_CPS} calls/s (SIPp on CPU "
        f"{LOAD_CPU} too)."
    )
    print(f"  offered            {offered:12,.0f} pkt/s")
    print(f"  dropped by guard   {dropped_ps:12,.0f} pkt/s  (userspace, one core)")
    print(f"  kernel rcvbuf drop {int(r['kernel_dropped']):12,} packets (never reached the edge)")  # type: ignore[call-overload]
    print(f"  legit calls        {r['calls_ok']}/{r['calls']} ok, {r['calls_failed']} failed")
    print(f"  active bans        {r['bans']:.0f}; events written {r['events_written']:.0f}")
    print(
        f"  event store growth {r['store_growth']:,} bytes; events lost to the bound "
        f"{r['events_dropped']:.0f}"
    )
    print(
        result_line(
            "flood",
            value=dropped_ps,
            unit="pkt/s",
            baseline="offered",
            baseline_value=offered,
            legit_success=round(success, 4),
            store_growth_bytes=int(r["store_growth"]),  # type: ignore[call-overload]
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
