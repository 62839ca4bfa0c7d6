"""The real-peer harness against Kamailio, a known-good reference edge.

Every SIPp scenario and the baresip phone must work against Kamailio (tests/peers/
kamailio.cfg) before spitguard is asked to pass them: a failure here is a harness bug,
not a spitguard bug. Roles: edge 127.0.0.1, phones 127.0.1.x, upstream trunk 127.0.2.1.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peers import (
    SIP_DOMAIN,
    UPSTREAM_IP,
    MissingPeerError,
    Transport,
    free_port,
    phone_ip,
    require_tool,
    wait_until,
)
from peers.baresip import CLOSED, ESTABLISHED, Baresip
from peers.kamailio import Kamailio
from peers.sipp import SipMessage, Sipp

pytestmark = pytest.mark.kamailio

USERS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
OUTSIDE_NUMBER = "+15551234567"
PEERS = {"sipp": "sip-tester", "baresip": "baresip", "kamailio": "kamailio", "kamcmd": "kamailio"}

MakeSipp = Callable[..., Sipp]


@pytest.fixture(scope="session")
def upstream_port() -> int:
    return free_port(UPSTREAM_IP, "udp")


@pytest.fixture(scope="session")
def kamailio(tmp_path_factory: pytest.TempPathFactory, upstream_port: int) -> Iterator[Kamailio]:
    for program, package in PEERS.items():
        try:
            require_tool(program, package)
        except MissingPeerError as exc:
            pytest.fail(str(exc))  # a missing peer is a broken setup, never a skip
    with Kamailio(
        tmp_path_factory.mktemp("kamailio"), users=USERS, upstream=(UPSTREAM_IP, upstream_port)
    ) as edge:
        edge.start()
        yield edge


@pytest.fixture
def edge(kamailio: Kamailio) -> Iterator[Kamailio]:
    """The session's Kamailio with an empty location table; its log lines written during
    the test are printed at teardown (pytest shows them when the test fails)."""
    kamailio.forget_registrations()
    offset = len(kamailio.log())
    yield kamailio
    print(f"--- kamailio log during this test ({kamailio.log_path}):")
    print(kamailio.log()[offset:][-6000:])


@pytest.fixture
def make_sipp(tmp_path: Path, edge: Kamailio) -> Iterator[MakeSipp]:
    """Build SIPp runs aimed at the edge; every one still running at teardown is stopped."""
    made: list[Sipp] = []

    def make(scenario: str, *, local_ip: str, **kwargs: Any) -> Sipp:
        kwargs.setdefault("remote", edge.address)
        kwargs.setdefault("timeout", 10.0)
        sipp = Sipp(scenario, workdir=tmp_path / "sipp", local_ip=local_ip, **kwargs)
        made.append(sipp)
        return sipp

    yield make
    for sipp in made:
        if sipp.started:
            sipp.stop()


def registered_phone(make_sipp: MakeSipp, scenario: str, user: str, n: int, **kw: Any) -> Sipp:
    """A SIPp phone `user` at 127.0.1.n that registered through the edge."""
    phone = make_sipp(
        scenario, local_ip=phone_ip(n), user=user, password=USERS[user], name=f"{user}{n}", **kw
    ).start()
    phone.wait_registered(5)
    return phone


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_registered_phones_call_through_the_edge(
    edge: Kamailio, make_sipp: MakeSipp, transport: Transport
) -> None:
    bob = registered_phone(make_sipp, "uas_register_answer.xml", "bob", 2, transport=transport)
    assert edge.contacts("bob") == [f"sip:bob@{bob.address};transport={transport.upper()}"]

    alice = make_sipp(
        "uac_register_call.xml",
        local_ip=phone_ip(1),
        transport=transport,
        user="alice",
        password=USERS["alice"],
        service="bob",
        call_duration_ms=100,
    ).run()
    alice.assert_ok()
    callee = bob.wait().assert_ok()

    invite = only(callee.received("INVITE"))
    [record_route] = invite.headers("Record-Route")
    assert record_route.startswith(f"<sip:{edge.address};")
    assert re.search(r";lr[;>]", record_route), record_route  # a loose router
    assert only(alice.received("INVITE", 200)).header("Record-Route") == record_route
    # The BYE followed the route set: alice sent it to the edge, the edge relayed it.
    assert only(alice.sent("BYE")).header("Route") == record_route
    bye = only(callee.received("BYE"))
    assert bye.headers("Via")[0].startswith(f"SIP/2.0/{transport.upper()} {edge.address};")
    assert bye.header("Call-ID") == invite.header("Call-ID")
    # Both phones unregistered on the way out.
    assert edge.contacts("bob") == [] and edge.contacts("alice") == []


def test_wrong_password_and_unknown_user_get_the_same_answer(
    edge: Kamailio, make_sipp: MakeSipp
) -> None:
    wrong = make_sipp(
        "register_wrong_password.xml", local_ip=phone_ip(3), user="bob", password="not-bobs"
    ).run()
    unknown = make_sipp(
        "register_unknown_user.xml", local_ip=phone_ip(4), user="mallory", password="guess"
    ).run()
    wrong.assert_ok()
    unknown.assert_ok()

    assert [m.status for m in wrong.received("REGISTER")] == [401, 401], wrong.describe()
    assert [m.status for m in unknown.received("REGISTER")] == [401, 401], unknown.describe()
    assert shape(wrong.received("REGISTER")[-1]) == shape(unknown.received("REGISTER")[-1])
    assert edge.contacts("bob") == [] and edge.contacts("mallory") == []


def test_caller_cancels_a_ringing_call(edge: Kamailio, make_sipp: MakeSipp) -> None:
    bob = registered_phone(make_sipp, "uas_register_ring_cancel.xml", "bob", 2)
    alice = make_sipp(
        "uac_call_cancel.xml", local_ip=phone_ip(1), user="alice", service="bob"
    ).run()
    alice.assert_ok()
    callee = bob.wait().assert_ok()

    assert [m.status for m in alice.received("INVITE") if m.status != 100] == [180, 487]
    assert [m.status for m in alice.received("CANCEL")] == [200]
    assert len(callee.received("CANCEL")) == 1
    assert len(callee.received("ACK")) == 1
    assert callee.sent("INVITE", 200) == []
    # The 487 answers the INVITE (not the CANCEL): it carries the INVITE's whole Via set.
    invite = only(callee.received("INVITE"))
    assert only(callee.sent("INVITE", 487)).headers("Via") == invite.headers("Via")
    [via] = only(alice.received("INVITE", 487)).headers("Via")
    assert branch(via) == branch(alice.sent("INVITE")[0].header("Via"))


def test_parallel_forking_first_answer_wins(edge: Kamailio, make_sipp: MakeSipp) -> None:
    answers = registered_phone(make_sipp, "uas_register_answer.xml", "bob", 2)
    rings = registered_phone(make_sipp, "uas_register_ring_cancel.xml", "bob", 3)
    assert len(edge.contacts("bob")) == 2

    alice = make_sipp(
        "uac_bench.xml", local_ip=phone_ip(1), user="alice", service="bob", call_duration_ms=100
    ).run()
    alice.assert_ok()
    winner = answers.wait().assert_ok()
    loser = rings.wait().assert_ok()

    call_id = only(alice.sent("INVITE")).header("Call-ID")
    assert only(winner.received("INVITE")).header("Call-ID") == call_id
    assert only(loser.received("INVITE")).header("Call-ID") == call_id
    # The edge cancelled the ringing branch once the other answered.
    assert only(loser.received("CANCEL")).header("Call-ID") == call_id
    assert only(loser.sent("INVITE", 487)).headers("Via") == loser.received("INVITE")[0].headers(
        "Via"
    )
    answer = only(alice.received("INVITE", 200))
    assert answer.header("To") == only(winner.sent("INVITE", 200)).header("To")
    assert len(winner.received("BYE")) == 1


def test_upstream_trunk_calls_a_registered_user(edge: Kamailio, make_sipp: MakeSipp) -> None:
    carol = registered_phone(make_sipp, "uas_register_answer.xml", "carol", 6)
    trunk = make_sipp(
        "upstream_call.xml",
        local_ip=UPSTREAM_IP,
        user="+15550001111",
        service="carol",
        call_duration_ms=100,
    ).run()
    trunk.assert_ok()
    callee = carol.wait().assert_ok()

    assert [m.status for m in trunk.received("INVITE")][-1] == 200
    invite = only(callee.received("INVITE"))
    assert invite.header("Proxy-Authorization") is None
    assert invite.headers("Record-Route") == [f"<sip:{edge.address};lr>"]
    assert only(trunk.sent("BYE")).header("Route") == f"<sip:{edge.address};lr>"
    assert only(callee.received("BYE")).headers("Via")[0].startswith(f"SIP/2.0/UDP {edge.address}")


def test_outside_call_without_credentials_is_challenged_and_goes_nowhere(
    edge: Kamailio, make_sipp: MakeSipp, upstream_port: int
) -> None:
    upstream = make_sipp(
        "uas_answer.xml", local_ip=UPSTREAM_IP, local_port=upstream_port, remote=None
    ).start()

    stranger = make_sipp(
        "uac_invite_no_auth.xml", local_ip=phone_ip(1), user="alice", service=OUTSIDE_NUMBER
    ).run()
    stranger.assert_ok()
    assert [m.status for m in stranger.received()] == [407]
    challenge = only(stranger.received("INVITE", 407)).header("Proxy-Authenticate") or ""
    assert challenge.startswith(f'Digest realm="{SIP_DOMAIN}"')

    # The same call with credentials does reach the trunk. It starts only after the edge
    # answered the first one, so had the edge relayed that one, the trunk would have
    # received it first: the trunk seeing exactly this INVITE proves it never did.
    paid = make_sipp(
        "uac_bench.xml",
        local_ip=phone_ip(1),
        user="alice",
        password=USERS["alice"],
        service=OUTSIDE_NUMBER,
    ).run()
    paid.assert_ok()
    trunk = upstream.wait().assert_ok()
    invite = only(trunk.received("INVITE"))
    assert invite.header("Call-ID") == paid.sent("INVITE")[-1].header("Call-ID")
    assert invite.start_line == f"INVITE sip:{OUTSIDE_NUMBER}@{SIP_DOMAIN} SIP/2.0"
    assert invite.header("Proxy-Authorization") is None  # consumed by the edge


def test_baresip_registers_over_tcp_and_auto_answers(
    edge: Kamailio, make_sipp: MakeSipp, tmp_path: Path
) -> None:
    phone = Baresip(
        tmp_path / "baresip",
        user="carol",
        password=USERS["carol"],
        edge=edge.address,
        local_ip=phone_ip(5),
        lifetime=30,
    )
    with phone.start():
        phone.wait_registered(5)
        [contact] = wait_until(lambda: edge.contacts("carol"), 2, what="carol's binding")
        assert contact.startswith("sip:carol") and contact.endswith(";transport=tcp")
        # Kept with the binding: the TCP connection it registered over (the phone's flow).
        [flow] = edge.received("carol")
        assert flow.endswith(";transport=tcp")

        alice = make_sipp(
            "uac_bench.xml",
            local_ip=phone_ip(1),
            user="alice",
            service="carol",
            call_duration_ms=200,
        ).run()
        alice.assert_ok()
        phone.wait_for(ESTABLISHED, 5)
        phone.wait_for(CLOSED, 5)
        # UDP caller, TCP callee: the edge record-routes once per transport.
        routes = only(alice.received("INVITE", 200)).headers("Record-Route")
        assert len(routes) == 2 and "transport=tcp" in routes[0], routes
    # On SIGTERM baresip unregisters before it exits.
    wait_until(lambda: edge.contacts("carol") == [], 2, what="carol's binding to go")


def only(messages: list[SipMessage]) -> SipMessage:
    assert len(messages) == 1, [str(m) for m in messages]
    return messages[0]


def branch(via: str | None) -> str | None:
    match = re.search(r";branch=([^;,\s]+)", via or "")
    return match[1] if match else None


_PER_REQUEST = {"via", "from", "to", "call-id", "cseq"}
_NONCE = re.compile(r'\b(nonce|opaque)="[^"]*"')


def shape(response: SipMessage) -> tuple[str, list[str], list[tuple[str, str]]]:
    """What a response says beyond the request it answers: status line, header names in
    order, and every other header's value with nonces masked."""
    names = [n.lower() for n in response.header_names]
    values = [
        (name, _NONCE.sub(r'\1="*"', response.header(name) or ""))
        for name in names
        if name not in _PER_REQUEST
    ]
    return response.start_line, names, values
