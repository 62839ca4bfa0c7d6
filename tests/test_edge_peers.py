"""The running edge (`spitguard serve`) with real peers: SIPp phones and trunk, baresip.

The same scenarios as tests/test_peers_kamailio.py (which proves the harness against a
reference edge), aimed at spitguard. Roles: edge 127.0.0.1, phones 127.0.1.x, upstream
trunk 127.0.2.1; nothing is ever sent anywhere else. Every test starts its own edge, so
no binding leaks from one test into the next.

The guard drops calls from sources it does not know (invite policy "trusted"), so a
calling phone registers first (`registered_caller`) and calls from that same socket.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_server import DOMAIN, EDGE_HOST, USERS, EdgeServer, running_edge
from peers import UPSTREAM_IP, MissingPeerError, free_port, phone_ip, require_tool
from peers.baresip import CLOSED, ESTABLISHED, Baresip
from peers.sipp import SipMessage, Sipp

pytestmark = pytest.mark.edge

OUTSIDE_NUMBER = "+15551234567"
TRUNK_NUMBER = "+15550001111"
PEERS = {"sipp": "sip-tester", "baresip": "baresip"}
EXPOSED = "directly reachable from the Internet"
BEHIND_NAT = "behind NAT"

MakeSipp = Callable[..., Sipp]


@pytest.fixture(scope="module", autouse=True)
def _peers_installed() -> None:
    for program, package in PEERS.items():
        try:
            require_tool(program, package)
        except MissingPeerError as exc:
            pytest.fail(str(exc))  # a missing peer is a broken setup, never a skip


@pytest.fixture
def upstream_port() -> int:
    return free_port(UPSTREAM_IP, "udp")


@pytest.fixture
def edge_extra() -> str:
    """Extra TOML for the edge's config (a test overrides it by parametrizing it)."""
    return ""


@pytest.fixture
def edge(tmp_path: Path, upstream_port: int, edge_extra: str) -> Iterator[EdgeServer]:
    """A fresh edge whose upstream is 127.0.2.1:`upstream_port`, trusting that trunk. Its
    log is printed at teardown (pytest shows it when the test fails)."""
    with running_edge(
        tmp_path,
        upstream=[f"sip:{UPSTREAM_IP}:{upstream_port};transport=udp"],
        trusted=[f"{UPSTREAM_IP}/32"],
        extra=edge_extra,
    ) as server:
        try:
            yield server
        finally:
            lines = [ln for ln in server.log().splitlines() if " aiosqlite: " not in ln]
            print(f"--- edge log ({server.stderr_path}), aiosqlite lines left out:")
            print("\n".join(lines))


@pytest.fixture
def make_sipp(tmp_path: Path, edge: EdgeServer) -> Iterator[MakeSipp]:
    """Build SIPp runs aimed at the edge (domain acme.test); all are stopped at teardown."""
    made: list[Sipp] = []

    def make(scenario: str, *, local_ip: str, **kwargs: Any) -> Sipp:
        kwargs.setdefault("remote", edge.addr)
        kwargs.setdefault("timeout", 10.0)
        kwargs["keys"] = {"domain": DOMAIN, **kwargs.get("keys", {})}
        sipp = Sipp(scenario, workdir=tmp_path / "sipp", local_ip=local_ip, **kwargs)
        made.append(sipp)
        return sipp

    yield make
    for sipp in made:
        if sipp.started:
            sipp.stop()


def registered_phone(make_sipp: MakeSipp, scenario: str, user: str, n: int, **kw: Any) -> Sipp:
    """A SIPp UAS `user` at 127.0.1.n that registered through the edge and waits for calls."""
    phone = make_sipp(
        scenario, local_ip=phone_ip(n), user=user, password=USERS[user], name=f"{user}{n}", **kw
    ).start()
    phone.wait_registered(5)
    return phone


def registered_caller(
    make_sipp: MakeSipp, user: str, n: int, contact_host: str | None = None
) -> Sipp:
    """`user` registered from 127.0.1.n (binding left in place); call from its `local_port`."""
    ip = phone_ip(n)
    reg = make_sipp(
        "register_contact.xml",
        local_ip=ip,
        user=user,
        password=USERS[user],
        keys={"contact_host": contact_host or ip},
        name=f"reg-{user}{n}",
    )
    reg.run().assert_ok()
    return reg


def edge_route(edge: EdgeServer) -> re.Pattern[str]:
    """One Record-Route/Route entry of the edge: <sip:TOKEN@127.0.0.1:PORT;lr...>."""
    return re.compile(rf"<sip:[^@<>]+@{re.escape(EDGE_HOST)}:{edge.udp_port};lr(;[^>]*)?>")


def entries(values: list[str]) -> list[str]:
    """Route/Record-Route header lines split into their entries."""
    return [e.strip() for v in values for e in re.split(r",(?=\s*<)", v)]


def edge_via(edge: EdgeServer) -> str:
    return f"SIP/2.0/UDP {EDGE_HOST}:{edge.udp_port};"


# --- 1. a registered phone calls another through the edge -----------------------------
def test_registered_phones_call_and_bye_follows_the_record_route(
    edge: EdgeServer, make_sipp: MakeSipp
) -> None:
    bob = registered_phone(make_sipp, "uas_register_answer.xml", "bob", 2)
    alice = make_sipp(
        "uac_register_call.xml",
        local_ip=phone_ip(1),
        user="alice",
        password=USERS["alice"],
        service="bob",
        call_duration_ms=100,
    ).run()
    alice.assert_ok()
    assert alice.stats is not None and alice.stats.successful == 1, alice.describe()
    callee = bob.wait().assert_ok()

    # Digest registration: challenged once, then accepted.
    assert [m.status for m in alice.received("REGISTER")][:2] == [401, 200], alice.describe()
    invite = only(callee.received("INVITE"))
    assert invite.headers("Via")[0].startswith(edge_via(edge)), invite.text
    record_routes = entries(invite.headers("Record-Route"))
    assert len(record_routes) == 2, record_routes  # one entry per side
    for rr in record_routes:
        assert edge_route(edge).fullmatch(rr), rr
    # The BYE: alice sent it with Route headers naming the edge, the edge relayed it.
    routes = entries(only(alice.sent("BYE")).headers("Route"))
    assert routes, only(alice.sent("BYE")).text
    for route in routes:
        assert edge_route(edge).fullmatch(route), route
    bye = only(callee.received("BYE"))
    assert bye.headers("Via")[0].startswith(edge_via(edge)), bye.text
    assert bye.header("Call-ID") == invite.header("Call-ID")


# --- 2. wrong password and unknown user ------------------------------------------------
def test_wrong_password_and_unknown_user_get_the_same_answer(
    edge: EdgeServer, make_sipp: MakeSipp
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

    # No binding for bob: a call to bob from a registered phone finds nobody.
    alice = registered_caller(make_sipp, "alice", 1)
    call = make_sipp(
        "uac_call_unavailable.xml",
        local_ip=phone_ip(1),
        local_port=alice.local_port,
        user="alice",
        password=USERS["alice"],
        service="bob",
    ).run()
    call.assert_ok()
    finals = [m.status for m in call.received("INVITE") if m.status not in (100, 407)]
    assert finals == [480], call.describe()


# --- 3. CANCEL of a ringing call -------------------------------------------------------
def test_caller_cancels_a_ringing_call(edge: EdgeServer, make_sipp: MakeSipp) -> None:
    bob = registered_phone(make_sipp, "uas_register_ring_cancel.xml", "bob", 2)
    alice = registered_caller(make_sipp, "alice", 1)
    caller = make_sipp(
        "uac_call_cancel.xml",
        local_ip=phone_ip(1),
        local_port=alice.local_port,
        user="alice",
        password=USERS["alice"],
        service="bob",
    ).run()
    caller.assert_ok()
    callee = bob.wait().assert_ok()

    assert [m.status for m in caller.received("INVITE") if m.status not in (100, 407)] == [
        180,
        487,
    ], caller.describe()
    assert [m.status for m in caller.received("CANCEL")] == [200]
    cancel = only(callee.received("CANCEL"))
    assert cancel.headers("Via")[0].startswith(edge_via(edge)), cancel.text
    assert len(callee.received("ACK")) == 1
    assert callee.sent("INVITE", 200) == []
    assert len(callee.sent("INVITE", 487)) == 1


# --- 4. two contacts for one AOR: parallel forking -------------------------------------
def test_two_contacts_first_answer_wins_and_the_other_is_cancelled(
    edge: EdgeServer, make_sipp: MakeSipp
) -> None:
    answers = registered_phone(
        make_sipp, "uas_register_answer.xml", "bob", 2, ooc_scenario="uas_answer_after_ring.xml"
    )
    rings = registered_phone(make_sipp, "uas_register_ring_cancel.xml", "bob", 3)
    alice = registered_caller(make_sipp, "alice", 1)
    caller = make_sipp(
        "uac_bench.xml",
        local_ip=phone_ip(1),
        local_port=alice.local_port,
        user="alice",
        password=USERS["alice"],
        service="bob",
        call_duration_ms=100,
    ).run()
    caller.assert_ok()
    assert caller.stats is not None and caller.stats.successful == 1, caller.describe()
    winner = answers.wait().assert_ok()
    loser = rings.wait().assert_ok()

    call_id = caller.sent("INVITE")[-1].header("Call-ID")
    assert only(winner.received("INVITE")).header("Call-ID") == call_id
    assert only(loser.received("INVITE")).header("Call-ID") == call_id
    # The edge cancelled the ringing branch once the other answered.
    cancel = only(loser.received("CANCEL"))
    assert cancel.header("Call-ID") == call_id
    assert cancel.headers("Via")[0].startswith(edge_via(edge)), cancel.text
    assert loser.sent("INVITE", 200) == []
    answer = only(caller.received("INVITE", 200))
    assert answer.header("To") == only(winner.sent("INVITE", 200)).header("To")
    assert len(winner.received("BYE")) == 1


# --- 5. the upstream trunk calls a phone -----------------------------------------------
def test_upstream_call_reaches_the_phone_from_the_edge(
    edge: EdgeServer, make_sipp: MakeSipp
) -> None:
    bob = registered_phone(make_sipp, "uas_register_answer.xml", "bob", 2)
    trunk = make_sipp(
        "upstream_call.xml",
        local_ip=UPSTREAM_IP,
        user=TRUNK_NUMBER,
        service="bob",
        call_duration_ms=100,
    ).run()
    trunk.assert_ok()
    callee = bob.wait().assert_ok()

    assert [m.status for m in trunk.received("INVITE")][-1] == 200
    invite = only(callee.received("INVITE"))
    vias = invite.headers("Via")
    # The phone sees the edge as the sender (the only origin it accepts calls from).
    assert vias[0].startswith(edge_via(edge)), invite.text
    assert any(UPSTREAM_IP in v for v in vias[1:]), vias
    assert invite.header("Proxy-Authorization") is None
    for rr in entries(invite.headers("Record-Route")):
        assert edge_route(edge).fullmatch(rr), rr
    bye = only(callee.received("BYE"))
    assert bye.headers("Via")[0].startswith(edge_via(edge)), bye.text


# --- 6. calls to the outside need credentials ------------------------------------------
def test_outside_call_without_credentials_is_challenged_and_goes_nowhere(
    edge: EdgeServer, make_sipp: MakeSipp, upstream_port: int
) -> None:
    upstream = make_sipp(
        "uas_answer.xml", local_ip=UPSTREAM_IP, local_port=upstream_port, remote=None
    ).start()
    alice = registered_caller(make_sipp, "alice", 1)

    stranger = make_sipp(
        "uac_invite_no_auth.xml",
        local_ip=phone_ip(1),
        local_port=alice.local_port,
        user="alice",
        service=OUTSIDE_NUMBER,
    ).run()
    stranger.assert_ok()
    assert [m.status for m in stranger.received() if m.status != 100] == [407]
    challenge = only(stranger.received("INVITE", 407)).header("Proxy-Authenticate") or ""
    assert challenge.startswith("Digest "), challenge

    # The same call with credentials does reach the trunk. It starts only after the edge
    # answered the first one, so had the edge relayed that one, the trunk would have
    # received it first: the trunk seeing exactly this INVITE proves it never did.
    paid = make_sipp(
        "uac_register_call.xml",
        local_ip=phone_ip(1),
        local_port=alice.local_port,
        user="alice",
        password=USERS["alice"],
        service=OUTSIDE_NUMBER,
        call_duration_ms=100,
    ).run()
    paid.assert_ok()
    trunk = upstream.wait().assert_ok()
    invite = only(trunk.received("INVITE"))
    assert invite.header("Call-ID") == paid.sent("INVITE")[-1].header("Call-ID")
    assert invite.start_line.startswith(f"INVITE sip:{OUTSIDE_NUMBER}@"), invite.start_line
    assert invite.header("Proxy-Authorization") is None  # consumed by the edge
    assert invite.headers("Via")[0].startswith(edge_via(edge)), invite.text


# --- 7. bindings survive a restart -----------------------------------------------------
def test_bindings_and_nat_status_survive_a_restart(edge: EdgeServer, make_sipp: MakeSipp) -> None:
    # bob stays up across the restart, waiting for the one call it answers afterwards.
    bob = registered_phone(make_sipp, "uas_register_answer.xml", "bob", 5, timeout=30.0)
    registered_caller(make_sipp, "carol", 6, contact_host="192.168.1.20")

    assert edge.stop() == 0, edge.log()
    # No CLI or API lists bindings yet: read the store's SQLite file directly.
    nat = bindings_nat(edge.data_dir / "spitguard.db")
    assert set(nat) == {f"sip:bob@{DOMAIN}", f"sip:carol@{DOMAIN}"}, nat
    assert nat[f"sip:bob@{DOMAIN}"]["verdict"] == EXPOSED, nat
    assert nat[f"sip:carol@{DOMAIN}"]["verdict"] == BEHIND_NAT, nat
    assert "contact_private" in nat[f"sip:carol@{DOMAIN}"]["evidence"], nat

    edge.start()
    assert "2 bindings restored" in edge.banner, edge.banner
    trunk = make_sipp(
        "upstream_call.xml",
        local_ip=UPSTREAM_IP,
        user=TRUNK_NUMBER,
        service="bob",
        call_duration_ms=100,
    ).run()
    trunk.assert_ok()
    callee = bob.wait().assert_ok()
    # bob registered once (challenge + credentials), before the restart, and took the
    # call after it; the only other REGISTER is its unREGISTER at the end.
    registers = [m for m in callee.sent("REGISTER") if m.header("Expires") != "0"]
    assert len(registers) == 2, callee.describe()
    assert only(callee.received("INVITE")).headers("Via")[0].startswith(edge_via(edge))


def bindings_nat(db: Path) -> dict[str, dict[str, Any]]:
    """AOR -> NAT classification (nat_json) of every stored binding."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT aor, nat_json FROM bindings").fetchall()
    return {aor: json.loads(raw) for aor, raw in rows}


# --- 8. baresip over TCP ---------------------------------------------------------------
# baresip 1.0's libre walks every WWW-Authenticate header and gives up on the whole
# response when one names an algorithm other than MD5 ("Register: Function not
# implemented"). That is why the edge offers MD5 only by default; with SHA-256 also
# offered, baresip 1.0 cannot register (registrar.digest_algorithms documents this).


@pytest.mark.parametrize("edge_extra", [pytest.param("", id="default-challenges")])
def test_baresip_registers_over_tcp_and_auto_answers(
    edge: EdgeServer, make_sipp: MakeSipp, tmp_path: Path
) -> None:
    phone = Baresip(
        tmp_path / "baresip",
        user="carol",
        password=USERS["carol"],
        edge=f"{EDGE_HOST}:{edge.tcp_port}",
        local_ip=phone_ip(7),
        domain=DOMAIN,
        transport="tcp",
        lifetime=30,
    )
    with phone.start():
        phone.wait_registered(5)
        trunk = make_sipp(
            "upstream_call.xml",
            local_ip=UPSTREAM_IP,
            user=TRUNK_NUMBER,
            service="carol",
            call_duration_ms=200,
        ).run()
        trunk.assert_ok()
        phone.wait_for(ESTABLISHED, 5)
        phone.wait_for(CLOSED, 5)
        # UDP trunk, TCP phone: the edge record-routes once per side.
        routes = entries(only(trunk.received("INVITE", 200)).headers("Record-Route"))
        assert len(routes) == 2 and "transport=tcp" in routes[0], routes


# --- helpers ---------------------------------------------------------------------------
def only(messages: list[SipMessage]) -> SipMessage:
    assert len(messages) == 1, [str(m) for m in messages]
    return messages[0]


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
