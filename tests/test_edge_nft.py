"""The running edge offloads bans into nftables, inside a network namespace of its own.

The edge runs under `ip netns exec` with `firewall.nftables = "on"`; the test talks to it
with sockets created in that namespace (netns.socket_in), so nothing touches the host's
ruleset or network. Scanners play from 127.0.66.x, a phone from 127.0.1.9.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corpus import read
from edge_client import parse_metrics, register, silent, wait_for
from edge_server import EDGE_HOST, EdgeServer, running_edge
from netns import NFT, exec_prefix, http_get_in, netns, sh, socket_in

pytestmark = pytest.mark.timeout(120)

TABLE = "sgedge"
METRICS = 9460  # the namespace is empty: the default port is free there


@pytest.fixture
def ns() -> Iterator[str]:
    with netns() as name:
        yield name


@pytest.fixture
def edge(tmp_path: Path, ns: str) -> Iterator[EdgeServer]:
    extra = (
        f'[firewall]\nnftables = "on"\ntable = "{TABLE}"\nflush_interval = 0.05\n'
        f"[metrics]\nport = {METRICS}\n[guard]\nevents_flush_interval = 0.2\n"
    )
    with running_edge(tmp_path, extra=extra, wrap=exec_prefix(ns)) as e:
        yield e


def nft(ns: str, *args: str) -> list[dict[str, Any]]:
    assert NFT is not None
    res = sh(*exec_prefix(ns), NFT, "-j", "list", *args, check=False)
    if res.returncode != 0:
        return []
    items: list[dict[str, Any]] = json.loads(res.stdout)["nftables"]
    return items


def kernel_banned(ns: str) -> set[str]:
    for item in nft(ns, "set", "inet", TABLE, "banned4"):
        if "set" in item:
            return {e["elem"]["val"] for e in item["set"].get("elem", [])}
    return set()


def kernel_drops(ns: str) -> int:
    for item in nft(ns, "counter", "inet", TABLE, "banned_drops"):
        if "counter" in item:
            return int(item["counter"]["packets"])
    return -1


def udp_in(ns: str, ip: str) -> socket.socket:
    s = socket_in(ns)
    s.bind((ip, 0))
    s.settimeout(0.2)
    return s


def metrics(ns: str) -> dict[str, float]:
    return parse_metrics(http_get_in(ns, EDGE_HOST, METRICS, "/metrics").decode())


def dropped_in_python(ns: str) -> float:
    return metrics(ns).get('spitguard_packets_total{reason="banned",verdict="drop"}', 0.0)


def test_a_scanner_ban_lands_in_the_kernel_and_its_flood_never_reaches_python(
    edge: EdgeServer, ns: str
) -> None:
    scanner = udp_in(ns, "127.0.66.9")
    with scanner:
        scanner.sendto(read("scanners", "svmap_v03_options.sip"), (EDGE_HOST, edge.udp_port))
        wait_for(lambda: "127.0.66.9" in kernel_banned(ns))
        before = dropped_in_python(ns)
        for _ in range(50):
            scanner.sendto(read("scanners", "sipsak_096_options.sip"), (EDGE_HOST, edge.udp_port))
        assert silent(scanner, 0.5)
    assert kernel_drops(ns) == 50
    assert dropped_in_python(ns) == before  # Python never saw the flood
    wait_for(lambda: metrics(ns).get("spitguard_kernel_drops_total") == 50.0)


def test_manual_bans_and_unbans_reach_the_kernel(edge: EdgeServer, ns: str) -> None:
    r = edge.cli("bans", "add", "127.0.66.20", "--duration", "1h", "--reason", "test")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "127.0.66.20" in kernel_banned(ns))
    r = edge.cli("bans", "remove", "127.0.66.20")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "127.0.66.20" not in kernel_banned(ns))


def test_a_ban_on_a_registered_phones_address_stays_in_python(edge: EdgeServer, ns: str) -> None:
    phone = udp_in(ns, "127.0.1.9")
    flood = udp_in(ns, "127.0.1.9")
    with phone, flood:
        register(phone, edge, "bob")
        for _ in range(200):
            flood.sendto(read("scanners", "sipsak_096_options.sip"), (EDGE_HOST, edge.udp_port))
        wait_for(
            lambda: (
                "127.0.1.9"
                in {b["source"] for b in json.loads(edge.cli("bans", "list", "--json").stdout)}
            )
        )
        assert "127.0.1.9" not in kernel_banned(ns)
        register(phone, edge, "bob", first_cseq=10)  # the phone's own flow still works


def test_bans_are_pushed_at_start_and_the_table_goes_at_stop(edge: EdgeServer, ns: str) -> None:
    r = edge.cli("bans", "add", "127.0.66.30", "--duration", "1h", "--reason", "test")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "127.0.66.30" in kernel_banned(ns))
    assert edge.stop() == 0
    assert nft(ns, "table", "inet", TABLE) == []  # removed: the kernel stops dropping
    edge.start()
    assert "127.0.66.30" in kernel_banned(ns)  # synced before the edge said "ready"


def test_without_nft_auto_keeps_dropping_in_python_and_on_refuses_to_start(
    tmp_path: Path,
) -> None:
    # nft never runs here (the program does not exist), so the host is untouched.
    missing = '[firewall]\nnft = "/nonexistent/nft"\n'
    (tmp_path / "auto").mkdir()
    (tmp_path / "on").mkdir()
    with running_edge(tmp_path / "auto", extra=missing + 'nftables = "auto"\n') as e:
        assert "nftables ban offload disabled" in e.stderr_path.read_text(errors="replace")
        scanner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with scanner:
            scanner.bind(("127.0.66.40", 0))
            scanner.settimeout(0.2)
            scanner.sendto(read("scanners", "svmap_v03_options.sip"), (EDGE_HOST, e.udp_port))
            wait_for(
                lambda: (
                    "127.0.66.40"
                    in {b["source"] for b in json.loads(e.cli("bans", "list", "--json").stdout)}
                )
            )
    with (
        pytest.raises(RuntimeError, match=re.escape('firewall.nftables is "on"')),
        running_edge(tmp_path / "on", extra=missing + 'nftables = "on"\n'),
    ):
        pass
