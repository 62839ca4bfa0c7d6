"""The running edge against real scanners (SIPVicious) and the scanner corpus, on loopback.

Scanners play from 127.0.66.x, phones from 127.0.1.x, the trunk from 127.0.2.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from corpus import manifest, read
from edge_client import parse_metrics, register, silent, wait_for
from edge_server import DOMAIN, EDGE_HOST, USERS, EdgeServer, free_port, running_edge


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make deps` (Debian package sipvicious)")
    return path


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[EdgeServer]:
    metrics = free_port()
    with running_edge(
        tmp_path,
        trusted=["127.0.2.1/32"],
        extra=f"[metrics]\nport = {metrics}\n",
    ) as e:
        e.metrics_port = metrics  # type: ignore[attr-defined]
        yield e


def metrics(edge: EdgeServer) -> dict[str, float]:
    port = edge.metrics_port  # type: ignore[attr-defined]
    text = urllib.request.urlopen(f"http://{EDGE_HOST}:{port}/metrics", timeout=5).read()
    return parse_metrics(text.decode())


def bans(edge: EdgeServer) -> list[dict[str, object]]:
    r = edge.cli("bans", "list", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert isinstance(data, list)
    return data


def udp_socket(ip: str, port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, port))
    s.settimeout(0.2)
    return s


def test_svmap_gets_no_response_at_all(edge: EdgeServer) -> None:
    out = subprocess.run(
        [_tool("svmap"), "-p", str(edge.udp_port), "-b", "127.0.66.1", "-t", "1", EDGE_HOST],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    combined = out.stdout + out.stderr
    assert "found nothing" in combined, combined
    assert "127.0.66.1" in {b["source"] for b in bans(edge)}


def test_svwar_enumerates_no_extension(edge: EdgeServer) -> None:
    out = subprocess.run(
        [
            _tool("svwar"),
            "-p",
            str(edge.udp_port),
            "-b",
            "127.0.66.2",
            "-e",
            "1000-1020",
            "--force",
            "--maximumtime",
            "20",
            "-t",
            "0.5",
            EDGE_HOST,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    combined = out.stdout + out.stderr
    # svwar prints a table of extensions it found; an empty scan says it found nothing.
    assert "found nothing" in combined or "| Extension" not in combined, combined
    for user in USERS:
        assert user not in combined


# svcrack 0.3.3 accepts -b but never passes it on (ASipOfRedWine gets no bindingip), so
# it would scan from 127.0.0.1. This wrapper makes its wildcard bind use the scanner's
# loopback address, as -b promises; nothing else about the tool changes.
_BIND_SHIM = """
import os, runpy, socket, sys
ip = sys.argv.pop(1)
_bind = socket.socket.bind
def bind(self, address):
    if isinstance(address, tuple) and address[0] in ("", "0.0.0.0"):
        address = (ip,) + tuple(address[1:])
    return _bind(self, address)
socket.socket.bind = bind
sys.argv[0] = sys.argv[1]
del sys.argv[1]
sys.path.insert(0, os.path.dirname(os.path.realpath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_svcrack_is_banned_and_learns_nothing(edge: EdgeServer) -> None:
    out = subprocess.run(
        [
            "/usr/bin/python3",
            "-c",
            _BIND_SHIM,
            "127.0.66.3",
            _tool("svcrack"),
            "-p",
            str(edge.udp_port),
            "-b",
            "127.0.66.3",
            "-u",
            "alice",
            "--domain",
            DOMAIN,
            "-r",
            "100000-100040",
            "--maximumtime",
            "20",
            "-t",
            "0.5",
            EDGE_HOST,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    combined = out.stdout + out.stderr
    assert USERS["alice"] not in combined
    assert "| Extension" not in combined or "alice" not in combined, combined
    banned = {b["source"]: b for b in bans(edge)}
    assert "127.0.66.3" in banned, banned


SCANNERS = manifest("scanners")


def test_scanner_corpus_from_untrusted_sources_gets_silence(edge: EdgeServer) -> None:
    for i, row in enumerate(SCANNERS):
        ip = f"127.0.66.{20 + i}"
        sock = udp_socket(ip)
        with sock:
            sock.sendto(read("scanners", row["name"]), (EDGE_HOST, edge.udp_port))
            assert silent(sock, 0.5), f"{row['name']} got an answer"
    m = metrics(edge)
    passed = m.get('spitguard_packets_total{reason="ok",verdict="pass"}', 0.0)
    assert passed == 0.0, m


def test_flood_is_banned_while_a_phone_behind_the_same_address_keeps_working(
    edge: EdgeServer,
) -> None:
    phone = udp_socket("127.0.1.9")
    flood = udp_socket("127.0.1.9")
    with phone, flood:
        register(phone, edge, "bob")
        options = read("scanners", "sipsak_096_options.sip")
        # The flooder shares the phone's address but not its port.
        for _ in range(200):
            flood.sendto(options, (EDGE_HOST, edge.udp_port))
        wait_for(lambda: "127.0.1.9" in {b["source"] for b in bans(edge)})
        # The phone still registers (a refresh, same Call-ID, higher CSeq) and is answered.
        register(phone, edge, "bob", first_cseq=10)


def test_bans_survive_a_restart(edge: EdgeServer) -> None:
    r = edge.cli("bans", "add", "127.0.66.77", "--duration", "1h", "--reason", "test")
    assert r.returncode == 0, r.stderr
    sock = udp_socket("127.0.66.78")
    with sock:
        sock.sendto(read("scanners", "svmap_v03_options.sip"), (EDGE_HOST, edge.udp_port))
        wait_for(lambda: "127.0.66.78" in {b["source"] for b in bans(edge)})
    assert edge.stop() == 0
    edge.start()
    sources = {b["source"] for b in bans(edge)}
    assert {"127.0.66.77", "127.0.66.78"} <= sources
    # And the restarted edge enforces them: a clean REGISTER from a banned address is
    # dropped without an answer.
    sock = udp_socket("127.0.66.77")
    with sock:
        sock.sendto(
            (
                f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                "Via: SIP/2.0/UDP 127.0.66.77;branch=z9hG4bKabc123;rport\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:alice@acme.test>;tag=1\r\n"
                "To: <sip:alice@acme.test>\r\nCall-ID: x1\r\nCSeq: 1 REGISTER\r\n"
                "Contact: <sip:alice@127.0.66.77>\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            (EDGE_HOST, edge.udp_port),
        )
        assert silent(sock, 1.0)
    m = metrics(edge)
    assert m.get('spitguard_packets_total{reason="banned",verdict="drop"}', 0.0) >= 1.0
