"""Trusted sources against a real DNS server on 127.0.0.1 whose zone the tests rewrite.

Addresses inside DNS answers are only data (nothing is sent to them): upstream roles use
127.0.2.x as in the house rules, IPv6 answers use the 2001:db8::/32 documentation prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spitguard.guard.trusted import (
    EntryStatus,
    IPNetwork,
    TrustedSet,
    TrustedSources,
    parse_entry,
)

T = TypeVar("T")

# --- a small authoritative DNS server for the tests -------------------------------------


@dataclass
class FakeDns:
    """Zone data and failure modes; change them at any time between refreshes.

    ``mode`` applies to every query; ``failing`` to single names. Modes: "timeout" (no
    answer at all), "servfail", "nxdomain".
    """

    records: dict[tuple[str, str], tuple[int, list[str]]] = field(default_factory=dict)
    mode: str | None = None
    failing: dict[str, str] = field(default_factory=dict)
    queries: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0

    def set(self, name: str, rdtype: str, ttl: int, *rdatas: str) -> None:
        self.records[(name.lower().rstrip("."), rdtype)] = (ttl, list(rdatas))

    def remove(self, name: str, rdtype: str) -> None:
        del self.records[(name.lower().rstrip("."), rdtype)]

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        mode = self.failing.get(name, self.mode)
        if mode == "timeout":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif mode == "nxdomain" or all(n != name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif (name, rdtype) in self.records:
            ttl, rdatas = self.records[(name, rdtype)]
            response.answer.append(
                dns.rrset.from_text_list(question.name, ttl, dns.rdataclass.IN, rdtype, rdatas)
            )
        return response.to_wire()


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: FakeDns) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


@contextlib.asynccontextmanager
async def dns_server() -> AsyncIterator[FakeDns]:
    server = FakeDns()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _DnsProtocol(server), local_addr=("127.0.0.1", 0)
    )
    server.port = transport.get_extra_info("sockname")[1]
    try:
        yield server
    finally:
        transport.close()


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def arun(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), timeout=20))


def sources(
    server: FakeDns, groups: dict[str, list[str]], clock: Clock, **kwargs: Any
) -> TrustedSources:
    return TrustedSources(
        groups,
        nameservers=[("127.0.0.1", server.port)],
        timeout=0.3,
        clock=clock,
        **kwargs,
    )


def status_of(src: TrustedSources, entry: str) -> EntryStatus:
    (found,) = [s for s in src.status() if s.entry == entry]
    return found


# --- literal networks -------------------------------------------------------------------


def test_literal_entries_longest_prefix_names_the_group() -> None:
    trusted = TrustedSet.from_groups(
        {
            "upstream": ["127.0.2.0/24", "::1", "2001:db8:1::/48"],
            "peers": ["127.0.0.0/8", "127.0.2.7", "2001:db8::/32", "fe80::/10"],
        }
    )
    assert trusted.contains("127.0.2.7") == "peers"  # /32 beats /24
    assert trusted.contains("127.0.2.8") == "upstream"
    assert trusted.contains("127.1.1.1") == "peers"
    assert trusted.contains("128.0.0.1") is None
    assert trusted.contains("::1") == "upstream"
    assert trusted.contains("0:0:0:0:0:0:0:1") == "upstream"  # non-canonical spelling
    assert trusted.contains("2001:db8:1:2::5") == "upstream"
    assert trusted.contains("2001:0db8:0002::5") == "peers"
    assert trusted.contains("2001:db9::1") is None
    # Dual-stack sockets report IPv4 peers as IPv4-mapped IPv6.
    assert trusted.contains("::ffff:127.0.2.8") == "upstream"
    assert trusted.contains("::ffff:127.0.2.7") == "peers"
    assert trusted.contains("fe80::1%lo") == "peers"
    for junk in ("", "not-an-ip", "1.2.3", "127.0.2.1:5060", "::g", "127.0.2.1\x00"):
        assert trusted.contains(junk) is None
    assert trusted.groups == {"upstream", "peers"}


def test_same_network_in_two_groups_first_group_wins() -> None:
    trusted = TrustedSet.from_groups({"upstream": ["127.0.2.1"], "peers": ["127.0.2.1/32"]})
    assert trusted.contains("127.0.2.1") == "upstream"
    assert trusted.contains("::ffff:127.0.2.1") == "upstream"


def test_mapped_ipv6_network_matches_ipv4_sources() -> None:
    trusted = TrustedSet.from_groups({"peers": ["::ffff:127.0.3.0/120"]})
    assert trusted.contains("127.0.3.9") == "peers"
    assert trusted.contains("::ffff:127.0.3.9") == "peers"


def test_empty_set_trusts_nothing() -> None:
    assert TrustedSet().contains("127.0.0.1") is None
    assert len(TrustedSet()) == 0


def test_literal_only_sources_need_no_dns() -> None:
    src = TrustedSources({"upstream": ["127.0.2.1", "2001:db8::/32"]}, nameservers=[])
    assert src.snapshot().contains("127.0.2.1") == "upstream"
    assert src.next_due() is None
    assert arun(src.refresh_all) is src.snapshot()
    status = status_of(src, "2001:db8::/32")
    assert (status.kind, status.addresses, status.expires_at) == (
        "network",
        ("2001:db8::/32",),
        None,
    )


@pytest.mark.parametrize(
    ("entry", "kind", "name"),
    [
        ("127.0.2.1", "network", None),
        (" 2001:db8::/32 ", "network", None),
        ("pbx.example.test", "host", "pbx.example.test"),
        ("pbx.example.test.", "host", "pbx.example.test"),
        ("_sip._udp.example.test", "srv", "_sip._udp.example.test"),
        ("srv:sip.example.test", "srv", "sip.example.test"),
        ("NAPTR:example.test", "naptr", "example.test"),
    ],
)
def test_entry_kinds(entry: str, kind: str, name: str | None) -> None:
    parsed = parse_entry("upstream", entry)
    assert parsed.kind == kind
    assert (parsed.name and parsed.name.to_text(omit_final_dot=True)) == name


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "   ",
        "10.0.0.1/24",  # host bits set
        "10.0.0.300",
        "300.1.1.1/8",
        "2001:db8::/129",
        "pbx.example.test:5060",
        "txt:example.test",
        "http://pbx.example.test",
        "bad_name!.example.test",
        "a..b",
        "srv:",
        "naptr:  ",
        "x" * 64 + ".example.test",
    ],
)
def test_malformed_entry_is_a_clear_value_error(entry: str) -> None:
    with pytest.raises(ValueError, match="trusted-source entry") as info:
        TrustedSources({"upstream": ["127.0.2.1", entry]}, nameservers=[])
    assert repr(entry) in str(info.value)
    assert "'upstream'" in str(info.value)


def test_bad_configuration_values() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        TrustedSources({"upstream": [42]}, nameservers=[])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="must list entries"):
        TrustedSources({"upstream": "127.0.2.1"}, nameservers=[])
    with pytest.raises(ValueError, match="group name"):
        TrustedSources({"": ["127.0.2.1"]}, nameservers=[])
    with pytest.raises(ValueError, match="must be an IP address"):
        TrustedSources({}, nameservers=[("dns.example.test", 53)])
    with pytest.raises(ValueError, match="min_ttl"):
        TrustedSources({}, nameservers=[], min_ttl=60, max_ttl=30)
    with pytest.raises(ValueError, match="only IP addresses and CIDRs"):
        TrustedSet.from_groups({"upstream": ["pbx.example.test"]})


def test_failed_reload_keeps_the_old_configuration() -> None:
    src = TrustedSources({"upstream": ["127.0.2.1"]}, nameservers=[])
    with pytest.raises(ValueError, match=r"10\.0\.0\.1/8"):
        src.set_groups({"upstream": ["127.0.2.2"], "peers": ["10.0.0.1/8"]})
    assert src.contains("127.0.2.1") == "upstream"
    assert src.contains("127.0.2.2") is None


# --- property: agrees with a naive ipaddress implementation ------------------------------


def _naive(networks: list[tuple[str, IPNetwork]], address: str) -> str | None:
    def unmap(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
        mapped = getattr(ip, "ipv4_mapped", None)
        return mapped or ip

    addr = unmap(ipaddress.ip_address(address))
    best: tuple[int, str] | None = None
    for group, net in networks:
        if (
            net.version == 6
            and net.prefixlen >= 96
            and unmap(net.network_address) != net.network_address
        ):
            net = ipaddress.ip_network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
        if addr in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, group)
    return None if best is None else best[1]


def _networks(version: Literal[4, 6]) -> st.SearchStrategy[IPNetwork]:
    bits = 32 if version == 4 else 128
    return st.builds(
        lambda a, p: ipaddress.ip_network((int(a), p), strict=False),
        st.ip_addresses(v=version),
        st.integers(0, bits)
        | st.sampled_from([bits, bits - 8, bits // 2, 96 if bits == 128 else 24]),
    )


@settings(max_examples=300, deadline=None)
@given(
    networks=st.lists(
        st.tuples(st.sampled_from(["upstream", "peers", "lab"]), _networks(4) | _networks(6)),
        max_size=12,
    ),
    data=st.data(),
)
def test_contains_agrees_with_naive_ipaddress(
    networks: list[tuple[str, IPNetwork]], data: st.DataObject
) -> None:
    trusted = TrustedSet(networks)
    # Half the probes land inside a configured network, so matches are actually exercised.
    inside = [st.ip_addresses(network=str(net)) for _, net in networks]
    probe = data.draw(
        st.one_of(st.ip_addresses(), *inside) if inside else st.ip_addresses(), label="probe"
    )
    for spelling in {str(probe), probe.exploded}:
        assert trusted.contains(spelling) == _naive(networks, spelling), spelling
    if probe.version == 4:
        mapped = f"::ffff:{probe}"
        assert trusted.contains(mapped) == _naive(networks, mapped)


# --- DNS resolution ---------------------------------------------------------------------


def test_host_name_resolves_a_and_aaaa() -> None:
    async def scenario() -> None:
        async with dns_server() as server:
            server.set("pbx.example.test", "A", 300, "127.0.2.1", "127.0.2.2")
            server.set("pbx.example.test", "AAAA", 120, "2001:db8::1")
            clock = Clock()
            src = sources(server, {"upstream": ["127.0.9.0/24", "pbx.example.test"]}, clock)
            assert src.contains("127.0.2.1") is None  # never resolved: contributes nothing
            trusted = await src.refresh_all()
            assert trusted is src.snapshot()
            assert trusted.contains("127.0.2.1") == "upstream"
            assert trusted.contains("127.0.2.2") == "upstream"
            assert trusted.contains("2001:db8::1") == "upstream"
            assert trusted.contains("127.0.2.3") is None
            assert trusted.contains("127.0.9.4") == "upstream"
            status = status_of(src, "pbx.example.test")
            assert status.addresses == ("127.0.2.1", "127.0.2.2", "2001:db8::1")
            assert status.resolved and status.last_error is None
            assert status.expires_at == clock.now + 120  # shortest TTL in the answer
            assert status.last_success == clock.now

    arun(scenario)


@pytest.mark.parametrize(("ttl", "expected"), [(1, 30), (600, 600), (86400, 3600)])
def test_ttl_is_clamped(ttl: int, expected: float) -> None:
    async def scenario() -> None:
        async with dns_server() as server:
            server.set("pbx.example.test", "A", ttl, "127.0.2.1")
            clock = Clock()
            src = sources(server, {"upstream": ["pbx.example.test"]}, clock)
            await src.refresh_all()
            assert src.next_due() == clock.now + expected

    arun(scenario)


def test_srv_resolves_the_targets_addresses() -> None:
    async def scenario() -> None:
        async with dns_server() as server:
            server.set(
                "_sip._udp.example.test",
                "SRV",
                300,
                "10 60 5060 a.example.test.",
                "20 0 5060 b.example.test.",
                "30 0 5060 gone.example.test.",  # NXDOMAIN target: contributes nothing
            )
            server.set("a.example.test", "A", 300, "127.0.2.1")
            server.set("b.example.test", "AAAA", 300, "2001:db8::b")
            server.set("sip.example.test", "SRV", 300, "0 0 5080 c.example.test.")
            server.set("c.example.test", "A", 300, "127.0.2.3")
            clock = Clock()
            src = sources(
                server,
                {"upstream": ["_sip._udp.example.test"], "peers": ["srv:sip.example.test"]},
                clock,
            )
            trusted = await src.refresh_all()
            assert trusted.contains("127.0.2.1") == "upstream"
            assert trusted.contains("2001:db8::b") == "upstream"
            assert trusted.contains("127.0.2.3") == "peers"
            assert status_of(src, "_sip._udp.example.test").last_error is None
            assert ("sip.example.test", "A") not in server.queries  # srv: is not A/AAAA

    arun(scenario)


def test_naptr_follows_srv_to_addresses() -> None:
    async def scenario() -> None:
        async with dns_server() as server:
            server.set(
                "example.test",
                "NAPTR",
                300,
                '10 50 "S" "SIP+D2U" "" _sip._udp.example.test.',
                '20 50 "s" "SIPS+D2T" "" _sips._tcp.example.test.',
                '30 50 "A" "SIP+D2T" "" direct.example.test.',
                '40 50 "u" "E2U+sip" "!^.*$!sip:x@example.test!" .',  # not SIP: ignored
            )
            server.set("_sip._udp.example.test", "SRV", 300, "0 0 5060 udp.example.test.")
            server.set("_sips._tcp.example.test", "SRV", 200, "0 0 5061 tls.example.test.")
            server.set("udp.example.test", "A", 300, "127.0.2.1")
            server.set("tls.example.test", "AAAA", 300, "2001:db8::5061")
            server.set("direct.example.test", "A", 300, "127.0.2.2")
            clock = Clock()
            src = sources(server, {"upstream": ["naptr:example.test"]}, clock)
            trusted = await src.refresh_all()
            assert trusted.contains("127.0.2.1") == "upstream"
            assert trusted.contains("2001:db8::5061") == "upstream"
            assert trusted.contains("127.0.2.2") == "upstream"
            assert src.next_due() == clock.now + 200
            assert ("example.test", "A") not in server.queries

    arun(scenario)


def test_naptr_falls_back_to_srv_then_address_records() -> None:
    async def scenario() -> None:
        async with dns_server() as server:
            # No NAPTR: the well-known SRV names are used (RFC 3263 §4.1).
            server.set("srv-only.test", "A", 300, "127.0.2.99")
            server.set("_sip._tcp.srv-only.test", "SRV", 300, "0 0 5060 edge.srv-only.test.")
            server.set("edge.srv-only.test", "A", 300, "127.0.2.10")
            # Neither NAPTR nor SRV: the domain's own addresses.
            server.set("plain.test", "A", 300, "127.0.2.20")
            src = sources(
                server,
                {"upstream": ["naptr:srv-only.test"], "peers": ["naptr:plain.test"]},
                Clock(),
            )
            trusted = await src.refresh_all()
            assert trusted.contains("127.0.2.10") == "upstream"
            assert trusted.contains("127.0.2.99") is None
            assert trusted.contains("127.0.2.20") == "peers"

    arun(scenario)


def test_zone_change_is_picked_up_when_the_ttl_expires() -> None:
    async def scenario() -> None:
        async with dns_server() as server:
            server.set("pbx.example.test", "A", 60, "127.0.2.1")
            clock = Clock()
            updates: list[TrustedSet] = []
            src = sources(
                server, {"upstream": ["pbx.example.test"]}, clock, on_update=updates.append
            )
            before = await src.refresh_due(clock.now)  # never resolved: due at once
            assert before.contains("127.0.2.1") == "upstream"

            server.set("pbx.example.test", "A", 60, "127.0.2.9")
            asked = len(server.queries)
            clock.now += 59
            assert await src.refresh_due(clock.now) is before  # not due yet: no query
            assert len(server.queries) == asked

            clock.now += 1
            after = await src.refresh_due(clock.now)
            assert after.contains("127.0.2.1") is None
            assert after.contains("127.0.2.9") == "upstream"
            # Swapped, not mutated: a reader holding the old set still sees the old answer.
            assert before.contains("127.0.2.1") == "upstream"
            assert updates == [before, after]

            clock.now += 60  # same answer again: no new set, no update callback
            assert await src.refresh_due(clock.now) is after
            assert len(updates) == 2

    arun(scenario)


@pytest.mark.parametrize(
    ("mode", "reported"),
    [("timeout", "timeout"), ("servfail", "SERVFAIL"), ("nxdomain", "NXDOMAIN")],
)
def test_outage_keeps_the_last_good_set_then_recovers(mode: str, reported: str) -> None:
    async def scenario() -> None:
        async with dns_server() as server:
            server.set("pbx.example.test", "A", 60, "127.0.2.1")
            server.set("peer.example.test", "A", 60, "127.0.2.50")
            clock = Clock()
            src = sources(
                server,
                {"upstream": ["pbx.example.test"], "peers": ["peer.example.test"]},
                clock,
                min_ttl=10,
            )
            await src.refresh_all()

            server.failing["pbx.example.test"] = mode
            server.set("peer.example.test", "A", 60, "127.0.2.51")
            clock.now += 60
            trusted = await src.refresh_due(clock.now)
            assert trusted.contains("127.0.2.1") == "upstream"  # last good kept
            assert trusted.contains("127.0.2.51") == "peers"  # others still refresh
            status = status_of(src, "pbx.example.test")
            assert status.last_error is not None and reported in status.last_error
            assert (status.failures, status.consecutive_failures) == (1, 1)
            assert status.addresses == ("127.0.2.1",)
            assert status.expires_at == clock.now + 10  # retried at min_ttl

            clock.now += 10
            await src.refresh_due(clock.now)
            assert status_of(src, "pbx.example.test").consecutive_failures == 2
            assert src.contains("127.0.2.1") == "upstream"

            del server.failing["pbx.example.test"]
            server.set("pbx.example.test", "A", 60, "127.0.2.2")
            clock.now += 10
            trusted = await src.refresh_due(clock.now)
            assert trusted.contains("127.0.2.1") is None
            assert trusted.contains("127.0.2.2") == "upstream"
            status = status_of(src, "pbx.example.test")
            assert status.last_error is None
            assert (status.failures, status.consecutive_failures) == (2, 0)
            assert status.expires_at == clock.now + 60

    arun(scenario)


def test_empty_answer_does_not_wipe_the_last_good_set() -> None:
    async def scenario() -> None:
        async with dns_server() as server:
            server.set("pbx.example.test", "A", 60, "127.0.2.1")
            clock = Clock()
            src = sources(server, {"upstream": ["pbx.example.test"]}, clock)
            await src.refresh_all()
            server.remove("pbx.example.test", "A")
            server.set("pbx.example.test", "TXT", 60, '"moved"')
            clock.now += 60
            await src.refresh_due(clock.now)
            assert src.contains("127.0.2.1") == "upstream"
            assert (status_of(src, "pbx.example.test").last_error or "").startswith("no addresses")

    arun(scenario)


def test_never_resolved_entry_contributes_nothing() -> None:
    async def scenario() -> None:
        async with dns_server() as server:
            server.mode = "servfail"
            src = sources(server, {"upstream": ["127.0.2.1", "pbx.example.test"]}, Clock())
            trusted = await src.refresh_all()
            assert [net for _, net in trusted.networks] == [ipaddress.ip_network("127.0.2.1")]
            status = status_of(src, "pbx.example.test")
            assert not status.resolved and status.addresses == ()
            assert "SERVFAIL" in (status.last_error or "")

    arun(scenario)


def test_failures_are_logged_once_per_state_change(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with dns_server() as server:
            server.set("pbx.example.test", "A", 60, "127.0.2.1")
            clock = Clock()
            src = sources(server, {"upstream": ["pbx.example.test"]}, clock)
            await src.refresh_all()
            server.mode = "servfail"
            for _ in range(3):
                clock.now += 60
                await src.refresh_due(clock.now)
            server.mode = None
            clock.now += 60
            await src.refresh_due(clock.now)

    caplog.set_level(logging.INFO, logger="spitguard.guard.trusted")
    arun(scenario)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "pbx.example.test" in warnings[0].getMessage()
    assert sum("resolves again" in r.getMessage() for r in caplog.records) == 1


def test_run_loop_resolves_refreshes_and_stops() -> None:
    async def scenario() -> None:
        async with dns_server() as server:
            server.set("pbx.example.test", "A", 1, "127.0.2.1")
            updated = asyncio.Event()

            def on_update(_: TrustedSet) -> None:
                updated.set()

            # Real clock and a tiny min_ttl: the loop's own sleep drives the refresh.
            src = TrustedSources(
                {"upstream": ["pbx.example.test"]},
                nameservers=[("127.0.0.1", server.port)],
                timeout=0.3,
                min_ttl=0.05,
                max_ttl=0.05,
                on_update=on_update,
            )
            stop = asyncio.Event()
            task = asyncio.create_task(src.run(stop))
            await asyncio.wait_for(updated.wait(), timeout=5)
            assert src.contains("127.0.2.1") == "upstream"

            updated.clear()
            server.set("pbx.example.test", "A", 1, "127.0.2.2")
            await asyncio.wait_for(updated.wait(), timeout=5)
            assert src.contains("127.0.2.2") == "upstream"

            # Reconfiguring wakes the loop for the new entry.
            updated.clear()
            server.set("peer.example.test", "AAAA", 1, "2001:db8::7")
            src.set_groups({"upstream": ["pbx.example.test"], "peers": ["peer.example.test"]})
            await asyncio.wait_for(updated.wait(), timeout=5)
            assert src.contains("2001:db8::7") == "peers"

            stop.set()
            await asyncio.wait_for(task, timeout=5)

    arun(scenario)


def test_reload_keeps_state_of_unchanged_entries() -> None:
    async def scenario() -> None:
        async with dns_server() as server:
            server.set("pbx.example.test", "A", 300, "127.0.2.1")
            clock = Clock()
            src = sources(server, {"upstream": ["pbx.example.test"]}, clock)
            await src.refresh_all()
            src.set_groups({"upstream": ["pbx.example.test", "127.0.2.0/30"]})
            assert src.contains("127.0.2.1") == "upstream"
            assert src.contains("127.0.2.3") == "upstream"
            assert src.next_due() == clock.now + 300

    arun(scenario)
