"""NftBans against the real nft, each test inside its own throwaway network namespace.

Nothing here touches the host's ruleset: nft and all traffic run under `ip netns exec`,
and traffic only goes to loopback inside the namespace (all of 127/8 is local there once
`lo` is up, so 127.0.66.x can be bound as distinct sources).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from netns import IP, NFT, PATH, netns, sh
from spitguard.firewall import NftBans, NftResult, parse_address, run_subprocess

pytestmark = pytest.mark.timeout(60)

TABLE = "sgtest"
EDGE = 5060
BANNED = "127.0.66.5"
OTHER = "127.0.66.6"

# Runs inside the namespace: listen on one address/port, send one datagram (or TCP
# connect) from each source, print which sources got through.
_PROBE = r"""
import json, socket, sys, time
a = json.loads(sys.argv[1])
fam = socket.AF_INET6 if ":" in a["listen"] else socket.AF_INET
kind = socket.SOCK_STREAM if a["proto"] == "tcp" else socket.SOCK_DGRAM
rx = socket.socket(fam, kind)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
rx.bind((a["listen"], a["port"]))
got = []
if kind == socket.SOCK_STREAM:
    rx.listen(16)
    for src in a["sources"]:
        s = socket.socket(fam, kind)
        s.bind((src, 0))
        s.settimeout(a["window"])
        try:
            s.connect((a["listen"], a["port"]))
            got.append(src)
        except OSError:
            pass
        s.close()
else:
    for src in a["sources"]:
        s = socket.socket(fam, kind)
        s.bind((src, 0))
        s.sendto(src.encode(), (a["listen"], a["port"]))
        s.close()
    deadline = time.monotonic() + a["window"]
    while len(got) < len(a["sources"]):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        rx.settimeout(left)
        try:
            got.append(rx.recv(512).decode())
        except TimeoutError:
            break
print(json.dumps(sorted(got)))
"""


@pytest.fixture
def ns() -> Iterator[str]:
    with netns() as name:
        yield name


def _bans(ns: str, ports: Sequence[tuple[str, int]] = (("udp", EDGE),), **kw: Any) -> NftBans:
    kw.setdefault("nft", NFT)
    return NftBans(TABLE, ports=ports, netns=ns, **kw)


def nft_json(ns: str, *args: str) -> list[dict[str, Any]]:
    assert NFT is not None and IP is not None
    out = sh(IP, "netns", "exec", ns, NFT, "-j", "list", *args).stdout
    items: list[dict[str, Any]] = json.loads(out)["nftables"]
    return items


def elements(ns: str, set_name: str) -> dict[str, int]:
    """Element -> timeout in seconds."""
    (s,) = [i["set"] for i in nft_json(ns, "set", "inet", TABLE, set_name) if "set" in i]
    return {e["elem"]["val"]: e["elem"]["timeout"] for e in s.get("elem", [])}


async def probe(
    ns: str,
    sources: Sequence[str],
    *,
    port: int = EDGE,
    listen: str = "127.0.0.1",
    proto: str = "udp",
    window: float = 0.3,
) -> list[str]:
    """Which of `sources` reached a socket on listen:port inside the namespace."""
    assert IP is not None
    arg = json.dumps(
        {"listen": listen, "port": port, "sources": list(sources), "proto": proto, "window": window}
    )
    res = await run_subprocess([IP, "netns", "exec", ns, sys.executable, "-c", _PROBE, arg], None)
    assert res.returncode == 0, res.stderr.decode()
    got: list[str] = json.loads(res.stdout)
    return got


def test_setup_creates_table_sets_and_chain(ns: str) -> None:
    async def run() -> None:
        bans = _bans(ns, ports=[("udp", 5060), ("tcp", 5060), ("tls", 5061)])
        assert await bans.setup()
        items = nft_json(ns, "table", "inet", TABLE)
        sets = {i["set"]["name"]: i["set"] for i in items if "set" in i}
        assert sets["banned4"]["type"] == "ipv4_addr" and sets["banned4"]["flags"] == ["timeout"]
        assert sets["banned6"]["type"] == "ipv6_addr" and sets["banned6"]["flags"] == ["timeout"]
        ports = {(e["concat"][0], e["concat"][1]) for e in sets["edge_ports"]["elem"]}
        assert ports == {("udp", 5060), ("tcp", 5060), ("tcp", 5061)}
        (chain,) = [i["chain"] for i in items if "chain" in i]
        assert (chain["hook"], chain["prio"], chain["policy"]) == ("input", -150, "accept")
        assert [i["counter"]["name"] for i in items if "counter" in i] == ["banned_drops"]
        assert len([i for i in items if "rule" in i]) == 2  # one per address family

        # A stale table of the same name is replaced, not merged into.
        bans.ban(BANNED, 60)
        assert await bans.flush()
        assert await _bans(ns).setup()
        assert elements(ns, "banned4") == {}

    asyncio.run(run())


def test_ban_drops_only_the_banned_source_and_counts(ns: str) -> None:
    async def run() -> None:
        bans = _bans(ns)
        assert await bans.setup()
        assert sorted(await probe(ns, [BANNED, OTHER])) == [BANNED, OTHER]
        bans.ban(BANNED, 60)
        assert await bans.flush()
        assert await probe(ns, [BANNED, OTHER]) == [OTHER]
        assert await bans.drops() == 1
        bans.unban(BANNED)
        assert await bans.flush()
        assert await probe(ns, [BANNED, OTHER]) == [BANNED, OTHER]
        assert await bans.drops() == 1

    asyncio.run(run())


def test_other_ports_are_not_affected(ns: str) -> None:
    async def run() -> None:
        bans = _bans(ns, ports=[("udp", EDGE), ("tcp", 5061)])
        assert await bans.setup()
        bans.ban(BANNED, 60)
        assert await bans.flush()
        assert await probe(ns, [BANNED], port=5070) == [BANNED]
        assert await probe(ns, [BANNED], port=EDGE, proto="tcp") == [BANNED]  # udp-only port
        assert await bans.drops() == 0

    asyncio.run(run())


def test_tcp_edge_port_is_dropped(ns: str) -> None:
    async def run() -> None:
        bans = _bans(ns, ports=[("tls", 5061)])
        assert await bans.setup()
        bans.ban(BANNED, 60)
        assert await bans.flush()
        assert await probe(ns, [BANNED, OTHER], port=5061, proto="tcp") == [OTHER]
        assert await bans.drops() >= 1  # the SYN (maybe a retransmit too)

    asyncio.run(run())


def test_ipv6_and_v4_mapped_bans(ns: str) -> None:
    assert IP is not None
    for addr in ("fd00:66::5", "fd00:66::6"):
        sh(IP, "netns", "exec", ns, IP, "-6", "addr", "add", f"{addr}/128", "dev", "lo", "nodad")

    async def run() -> None:
        bans = _bans(ns)
        assert await bans.setup()
        bans.ban("FD00:66:0::5", 60)  # any spelling; nft gets the canonical form
        bans.ban(f"::ffff:{BANNED}", 60)  # what a dual-stack socket reports for IPv4
        assert await bans.flush()
        assert list(elements(ns, "banned6")) == ["fd00:66::5"]
        assert list(elements(ns, "banned4")) == [BANNED]
        assert await probe(ns, ["fd00:66::5", "fd00:66::6"], listen="::1") == ["fd00:66::6"]
        assert await probe(ns, [BANNED, OTHER]) == [OTHER]
        assert await bans.drops() == 2

    asyncio.run(run())


def test_ban_times_out_in_the_kernel(ns: str) -> None:
    async def run() -> None:
        bans = _bans(ns)
        assert await bans.setup()
        bans.ban(BANNED, 1)
        assert await bans.flush()
        start = time.monotonic()
        assert await probe(ns, [BANNED], window=0.2) == []
        while await probe(ns, [BANNED], window=0.2) != [BANNED]:
            assert time.monotonic() - start < 5, "ban never expired"
        assert time.monotonic() - start > 0.5
        assert elements(ns, "banned4") == {}

    asyncio.run(run())


def test_reban_replaces_the_timeout(ns: str) -> None:
    async def run() -> None:
        bans = _bans(ns)
        assert await bans.setup()
        bans.ban(BANNED, 60)
        assert await bans.flush()
        bans.ban(BANNED, 3600)
        assert await bans.flush()
        assert elements(ns, "banned4") == {BANNED: 3600}

    asyncio.run(run())


def test_sync_loads_active_bans_and_replaces_contents(ns: str) -> None:
    async def run() -> None:
        bans = _bans(ns)
        assert await bans.setup()
        bans.ban("127.0.66.99", 60)
        assert await bans.flush()
        now = time.time()
        active = [
            (BANNED, now + 60),
            ("127.0.66.7", now + 600),
            ("2001:db8::1", now + 30),
            ("127.0.66.8", now - 5),  # already expired: skipped
        ]
        assert await bans.sync(active, now)
        assert elements(ns, "banned4") == {BANNED: 60, "127.0.66.7": 600}
        assert elements(ns, "banned6") == {"2001:db8::1": 30}
        got = await probe(ns, [BANNED, "127.0.66.7", "127.0.66.8", OTHER])
        assert got == [OTHER, "127.0.66.8"]
        assert await bans.sync([], now)
        assert elements(ns, "banned4") == {} and elements(ns, "banned6") == {}

    asyncio.run(run())


def test_changes_are_batched_and_absent_unbans_do_not_fail(ns: str) -> None:
    calls: list[tuple[float, list[str], bytes | None]] = []

    async def recording(argv: Sequence[str], stdin: bytes | None) -> NftResult:
        started = time.monotonic()
        res = await run_subprocess(argv, stdin)
        calls.append((started, list(argv), stdin))
        assert res.returncode == 0, res.stderr.decode()
        return res

    async def until_calls(n: int) -> None:
        deadline = time.monotonic() + 3  # generous: a loaded CI box may be slow to fork
        while len(calls) < n:
            assert time.monotonic() < deadline, f"only {len(calls)} nft runs"
            await asyncio.sleep(0.01)

    async def run() -> None:
        bans = _bans(ns, runner=recording)
        assert await bans.setup()
        calls.clear()
        for i in range(1, 51):
            bans.ban(f"127.0.67.{i}", 60)
        bans.unban("127.0.68.1")  # never banned
        bans.unban("2001:db8::9")  # never banned, other family
        bans.ban("2001:db8::1", 60)
        bans.unban("127.0.67.50")  # last word wins within a batch
        await until_calls(1)
        await asyncio.sleep(0.05)
        assert len(calls) == 1  # the whole batch went out in one nft run
        assert calls[0][1][-2:] == ["-f", "-"]
        got = elements(ns, "banned4")
        assert set(got) == {f"127.0.67.{i}" for i in range(1, 50)}
        assert elements(ns, "banned6") == {"2001:db8::1": 60}

        bans.ban(OTHER, 60)  # right after a flush: held back to the interval
        bans.ban(BANNED, 60)
        await until_calls(2)
        assert calls[1][0] - calls[0][0] >= 0.19
        await asyncio.sleep(0.05)
        assert len(calls) == 2
        assert {BANNED, OTHER} <= set(elements(ns, "banned4"))

    asyncio.run(run())


@pytest.mark.parametrize(
    "bad",
    [
        "not-an-ip",
        "1.2.3.4; flush ruleset",
        "1.2.3.4 }",
        "127.0.66.0/24",
        "",
        "fe80::1%lo",
        "999.1.1.1",
        16909060,  # ipaddress would take an int; we do not
        None,
    ],
)
def test_invalid_addresses_are_rejected_before_any_command(ns: str, bad: Any) -> None:
    calls: list[list[str]] = []

    async def recording(argv: Sequence[str], stdin: bytes | None) -> NftResult:
        calls.append(list(argv))
        return await run_subprocess(argv, stdin)

    async def run() -> None:
        bans = _bans(ns, runner=recording)
        assert await bans.setup()
        calls.clear()
        with pytest.raises(ValueError):
            bans.ban(bad, 60)
        with pytest.raises(ValueError):
            bans.unban(bad)
        with pytest.raises(ValueError):
            await bans.sync([(BANNED, time.time() + 60), (bad, time.time() + 60)], time.time())
        await asyncio.sleep(0.05)
        assert calls == []
        assert elements(ns, "banned4") == {}

    asyncio.run(run())


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf"), "60"])
def test_invalid_durations_are_rejected(seconds: Any) -> None:
    bans = NftBans(ports=[("udp", EDGE)])
    with pytest.raises(ValueError):
        bans.ban(BANNED, seconds)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"table": "x; flush ruleset"},
        {"table": ""},
        {"ports": []},
        {"ports": [("sctp", 5060)]},
        {"ports": [("udp", 0)]},
        {"ports": [("udp", 70000)]},
        {"netns": "a b"},
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("ports", [("udp", EDGE)])
    with pytest.raises(ValueError):
        NftBans(**kwargs)


def test_parse_address_canonicalises() -> None:
    assert str(parse_address(" 127.0.66.5 ")) == BANNED
    assert str(parse_address("::ffff:192.0.2.1")) == "192.0.2.1"
    assert str(parse_address("2001:DB8:0::1")) == "2001:db8::1"


def test_close_removes_the_table(ns: str) -> None:
    async def run() -> None:
        bans = _bans(ns)
        assert await bans.setup()
        bans.ban(BANNED, 60)
        assert await bans.flush()
        bans.ban(OTHER, 60)  # queued, discarded by close
        await bans.close()
        assert not bans.available
        assert IP is not None and NFT is not None
        listed = sh(IP, "netns", "exec", ns, NFT, "list", "table", "inet", TABLE, check=False)
        assert listed.returncode != 0
        assert await probe(ns, [BANNED, OTHER]) == [BANNED, OTHER]
        bans.ban(BANNED, 60)  # after close: a validated no-op
        await bans.close()  # twice is fine

    asyncio.run(run())


def _expect_disabled(bans: NftBans, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        assert await bans.setup() is False
        assert not bans.available
        bans.ban(BANNED, 60)
        bans.unban(BANNED)
        assert await bans.sync([(BANNED, time.time() + 60)], time.time()) is False
        assert await bans.drops() == 0
        await bans.close()

    with caplog.at_level(logging.WARNING, logger="spitguard.firewall.nft"):
        asyncio.run(run())
    warnings = [r for r in caplog.records if r.name == "spitguard.firewall.nft"]
    assert len(warnings) == 1 and "userspace" in warnings[0].getMessage()


def test_missing_nft_inside_namespace_disables_offload(
    ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    _expect_disabled(_bans(ns, nft="/nonexistent/nft"), caplog)


def test_missing_nft_binary_disables_offload(caplog: pytest.LogCaptureFixture) -> None:
    # No namespace: this is the production path (exec fails with FileNotFoundError);
    # nothing is executed, so the host ruleset cannot be touched.
    _expect_disabled(NftBans(TABLE, ports=[("udp", EDGE)], nft="/nonexistent/nft"), caplog)


def test_nft_not_permitted_disables_offload(ns: str, caplog: pytest.LogCaptureFixture) -> None:
    setpriv = shutil.which("setpriv", path=PATH)
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is required")
    drop_root = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]

    async def unprivileged(argv: Sequence[str], stdin: bytes | None) -> NftResult:
        # ip netns exec NS <setpriv ...> nft ...: nft runs as nobody inside the namespace.
        return await run_subprocess([*argv[:4], *drop_root, *argv[4:]], stdin)

    _expect_disabled(_bans(ns, runner=unprivileged), caplog)
