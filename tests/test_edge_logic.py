"""The edge's sans-I/O logic: registrar, stateful proxy, flow tokens and location service.

Every test drives a real `Proxy` with SIP text through `Proxy.receive` and asserts on the
bytes it hands to the recording `Output` (see `edge_fixtures`). Time is a fake clock:
nothing sleeps. Tests marked `xfail(strict=True, reason="BUG: ...")` assert the correct
(RFC) behaviour for a defect in src/ that is reported to its owner.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_fixtures import (
    DOMAIN,
    EDGE_HOST,
    EDGE_PORT,
    PASSWORDS,
    SDP,
    TOKEN_KEY,
    UPSTREAM,
    Edge,
    Outgoing,
    Sent,
    ack_for_failure,
    answer,
    cancel_for,
    in_dialog,
    make_edge,
    new_branch,
    phone_flow,
    scanner_flow,
    sip_request,
    upstream_flow,
    via,
)
from spitguard.proxy.location import Binding, Location
from spitguard.proxy.nat import BEHIND_NAT, EXPOSED, PRIVATE, NatInfo
from spitguard.proxy.registrar import RegistrarPolicy
from spitguard.sip import Request, Response, SipUri, parse, parse_uri
from spitguard.sip.auth import format_challenge
from spitguard.sip.digest import DigestResult, DigestServer, ha1_from_passwords
from spitguard.sip.transaction import DEFAULT_TIMERS
from spitguard.transport.flow import Flow, FlowTokens, Target

ALICE = f"sip:alice@{DOMAIN}"
T1 = DEFAULT_TIMERS.t1
OUTSIDE = "sip:+15551234567@127.0.2.1"
INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-00000000a11c>"'


@pytest.fixture
def edge() -> Edge:
    return make_edge()


# --- small helpers ----------------------------------------------------------------------
def only(sent: list[Sent], where: Flow | Target) -> Sent:
    hits = [s for s in sent if s.where == where]
    assert len(hits) == 1, f"expected one message to {where}, got {sent!r}"
    return hits[0]


def statuses(sent: list[Sent], where: Flow | Target) -> list[int]:
    return [s.response.status for s in sent if s.where == where and s.data.startswith(b"SIP/")]


def shape(resp: Response, *, realm_as: str | None = None) -> tuple[object, ...]:
    """What a response reveals apart from nonces, tags and echoed request headers
    (with `realm_as`, the realm is replaced to compare two realms' challenges)."""
    challenges = [
        sorted(
            (k, realm_as if k == "realm" and realm_as else v)
            for k, v in ch.params.items()
            if k != "nonce"
        )
        for ch in resp.www_authenticate + resp.proxy_authenticate
    ]
    echoed = {"via", "from", "to", "call-id", "cseq"}
    others = [
        (n, v)
        for n, v in resp.fields
        if n.lower() not in echoed and "authenticate" not in n.lower()
    ]
    return (resp.status, resp.reason, [n for n, _ in resp.fields], challenges, others, resp.body)


def contacts_of(resp: Response) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in resp.get_all("contact"):
        msg = parse(sip_request("OPTIONS", "sip:x@y", [("Contact", value)]))
        contacts = msg.contacts
        assert isinstance(contacts, list)
        for c in contacts:
            assert c.expires is not None
            out[str(c.uri)] = c.expires
    return out


def register_alice(edge: Edge, n: int = 5, **kw: Any) -> Response:
    resp = edge.register(phone_flow(n), "alice", PASSWORDS["alice"], **kw)
    assert resp.status == 200, resp
    return resp


@dataclass
class Ringing:
    """An upstream INVITE to alice forwarded to her phone(s)."""

    caller: Flow
    out: Outgoing  # the INVITE as the caller sent it, and the edge's reaction
    forwarded: dict[Flow, Request]  # phone flow -> INVITE as that phone received it


def call_alice(edge: Edge, phones: list[Flow], **kw: Any) -> Ringing:
    caller = upstream_flow()
    out = edge.invite(caller, ALICE, from_uri="sip:+15550001111@127.0.2.1", **kw)
    forwarded = {f: only(out.sent, f).request for f in phones}
    return Ringing(caller, out, forwarded)


def phone_says(edge: Edge, flow: Flow, req: Request, status: int, **kw: Any) -> list[Sent]:
    kw.setdefault("tag", f"phone-{flow.remote_host}")
    if 100 < status < 300:
        kw.setdefault("contact", f"<sip:alice@{flow.remote_host}:{flow.remote_port}>")
    return edge.receive(flow, answer(req, status, **kw))


def route_set(msg: Request | Response) -> list[str]:
    return [str(rr) for rr in msg.record_routes]


def rr_tokens(edge: Edge, msg: Request | Response) -> list[Flow | Target | None]:
    """What the flow token in each Record-Route entry names."""
    out: list[Flow | Target | None] = []
    for rr in msg.record_routes:
        assert isinstance(rr.uri, SipUri)
        out.append(edge.tokens.decode(rr.uri.user or ""))
    return out


def sip_uri(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


# ======================================================================================
# Registrar
# ======================================================================================
class TestRegistrar:
    def test_challenge_then_ok_with_contact_list_and_expires(self, edge: Edge) -> None:
        p5 = phone_flow(5)
        first = edge.reply(p5, edge.register_request(p5, "alice", cseq=1))
        assert first.status == 401
        assert first.to.tag is not None
        challenges = first.www_authenticate
        assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
        assert {c.realm for c in challenges} == {DOMAIN}
        assert all(c.qop_options == ("auth",) for c in challenges)
        assert len({c.nonce for c in challenges}) == 1
        assert edge.bindings("alice") == []

        ok = edge.register(p5, "alice", PASSWORDS["alice"], expires=1800)
        assert ok.status == 200
        assert contacts_of(ok) == {"sip:alice@127.0.1.5:5060": 1800}
        assert ok.get("date") is not None
        (b,) = edge.bindings("alice")
        assert b.flow == p5
        assert b.expires_at == edge.clock.wall + 1800
        assert b.user_agent == "TestPhone/1.0"
        added, removed = edge.changes[-1]
        assert [x.key for x in added] == ["sip:alice@127.0.1.5:5060"] and removed == []
        assert edge.auth_results[-1] == (p5, True)

    def test_wrong_password_gets_another_401_and_no_binding(self, edge: Edge) -> None:
        resp = edge.register(phone_flow(5), "alice", "not-the-password")
        assert resp.status == 401
        assert resp.www_authenticate and not any(c.stale for c in resp.www_authenticate)
        assert edge.bindings("alice") == []
        assert edge.changes == []
        assert edge.auth_results == [(phone_flow(5), False)]

    def test_unknown_user_and_wrong_password_look_the_same(self, edge: Edge) -> None:
        p5 = phone_flow(5)
        wrong = edge.register(p5, "alice", "guess-1234", call_id="same-call-1")
        unknown = edge.register(p5, "dave", "guess-1234", call_id="same-call-2")
        first_wrong = edge.reply(p5, edge.register_request(p5, "alice", call_id="c1"))
        first_unknown = edge.reply(p5, edge.register_request(p5, "dave", call_id="c2"))
        assert wrong.status == unknown.status == 401
        assert shape(wrong) == shape(unknown)
        assert shape(first_wrong) == shape(first_unknown) == shape(wrong)
        assert wrong.www_authenticate[0].nonce != unknown.www_authenticate[0].nonce

    def test_unknown_domain_is_challenged_like_a_known_one(self, edge: Edge) -> None:
        p5 = phone_flow(5)
        known = edge.reply(p5, edge.register_request(p5, "alice"))
        foreign = edge.reply(p5, edge.register_request(p5, "alice", domain="evil.test"))
        assert foreign.status == 401
        assert {c.realm for c in foreign.www_authenticate} == {"evil.test"}
        assert shape(foreign, realm_as=DOMAIN) == shape(known)
        # Even the right password cannot register in a domain that is not ours.
        again = edge.register(p5, "alice", PASSWORDS["alice"], domain="evil.test")
        assert again.status == 401
        assert len(edge.location) == 0

    def test_contact_expires_param_wins_over_expires_header(self, edge: Edge) -> None:
        ok = register_alice(
            edge,
            contact=["<sip:alice@127.0.1.5:5060>;expires=120", "<sip:alice@127.0.1.5:5070>"],
            expires=600,
        )
        assert contacts_of(ok) == {"sip:alice@127.0.1.5:5060": 120, "sip:alice@127.0.1.5:5070": 600}
        now = edge.clock.wall
        assert sorted(b.expires_at - now for b in edge.bindings("alice")) == [120, 600]

    def test_default_expires_without_header_or_param(self, edge: Edge) -> None:
        ok = register_alice(edge)
        assert contacts_of(ok) == {"sip:alice@127.0.1.5:5060": 3600}

    @pytest.mark.parametrize("header", [True, False])
    def test_too_brief_interval_gets_423_with_min_expires(self, edge: Edge, header: bool) -> None:
        contact = "<sip:alice@127.0.1.5:5060>" + ("" if header else ";expires=30")
        resp = edge.register(
            phone_flow(5),
            "alice",
            PASSWORDS["alice"],
            contact=contact,
            expires=30 if header else None,
        )
        assert (resp.status, resp.reason) == (423, "Interval Too Brief")
        assert resp.get("min-expires") == "60"
        assert edge.bindings("alice") == []

    def test_expires_capped_at_max(self, edge: Edge) -> None:
        ok = register_alice(edge, expires=99_999)
        assert contacts_of(ok) == {"sip:alice@127.0.1.5:5060": 3600}
        (b,) = edge.bindings("alice")
        assert b.expires_at == edge.clock.wall + 3600

    def test_contact_star_with_expires_zero_removes_all(self, edge: Edge) -> None:
        register_alice(edge, 5)
        register_alice(edge, 6)
        assert len(edge.bindings("alice")) == 2
        resp = edge.register(
            phone_flow(5), "alice", PASSWORDS["alice"], contact="*", expires=0, call_id="unreg-1"
        )
        assert resp.status == 200
        assert resp.get_all("contact") == []
        assert edge.bindings("alice") == []
        assert len(edge.location) == 0
        added, removed = edge.changes[-1]
        assert added == [] and {b.flow for b in removed} == {phone_flow(5), phone_flow(6)}

    @pytest.mark.parametrize("expires", [None, 3600])
    def test_contact_star_needs_expires_zero(self, edge: Edge, expires: int | None) -> None:
        register_alice(edge)
        resp = edge.register(
            phone_flow(5), "alice", PASSWORDS["alice"], contact="*", expires=expires, call_id="x"
        )
        assert resp.status == 400
        assert len(edge.bindings("alice")) == 1

    def test_single_contact_expires_zero_removes_only_that_binding(self, edge: Edge) -> None:
        register_alice(edge, 5)
        register_alice(edge, 6)
        resp = edge.register(
            phone_flow(6),
            "alice",
            PASSWORDS["alice"],
            contact="<sip:alice@127.0.1.6:5060>;expires=0",
            cseq=50,
        )
        assert resp.status == 200
        assert contacts_of(resp) == {"sip:alice@127.0.1.5:5060": 3600}
        assert [b.flow for b in edge.bindings("alice")] == [phone_flow(5)]

    def test_multiple_contacts_per_aor(self, edge: Edge) -> None:
        register_alice(edge, 5)
        ok = register_alice(edge, 6, expires=1200)
        assert contacts_of(ok) == {
            "sip:alice@127.0.1.5:5060": 3600,
            "sip:alice@127.0.1.6:5060": 1200,
        }
        assert {b.flow for b in edge.bindings("alice")} == {phone_flow(5), phone_flow(6)}

    def test_register_without_contact_lists_bindings(self, edge: Edge) -> None:
        register_alice(edge, 5)
        resp = edge.register(phone_flow(9), "alice", PASSWORDS["alice"], contact=None)
        assert resp.status == 200
        assert contacts_of(resp) == {"sip:alice@127.0.1.5:5060": 3600}

    def test_too_many_contacts_is_refused(self) -> None:
        edge = make_edge(policy=RegistrarPolicy(max_contacts=2))
        register_alice(edge, 5)
        register_alice(edge, 6)
        resp = edge.register(phone_flow(7), "alice", PASSWORDS["alice"])
        assert resp.status == 403
        assert len(edge.bindings("alice")) == 2

    @pytest.mark.parametrize("cseq", [5, 10], ids=["lower", "equal"])
    def test_same_call_id_old_cseq_is_rejected(self, edge: Edge, cseq: int) -> None:
        register_alice(edge, call_id="call-A", cseq=10, expires=1800)  # stored CSeq 11
        (before,) = edge.bindings("alice")
        edge.clock.advance(10)
        resp = edge.register(
            phone_flow(5), "alice", PASSWORDS["alice"], call_id="call-A", cseq=cseq, expires=900
        )
        assert resp.status == 500
        assert edge.bindings("alice") == [before]

    def test_different_call_id_replaces_the_binding(self, edge: Edge) -> None:
        register_alice(edge, call_id="call-A", cseq=10)
        edge.clock.advance(10)
        ok = register_alice(edge, call_id="call-B", cseq=1, expires=1200)
        assert contacts_of(ok) == {"sip:alice@127.0.1.5:5060": 1200}
        (b,) = edge.bindings("alice")
        assert (b.call_id, b.cseq, b.expires_at) == ("call-B", 2, edge.clock.wall + 1200)

    def test_a_failed_register_changes_no_binding(self, edge: Edge) -> None:
        # RFC 3261 §10.3 step 8: bindings are committed only if every update succeeds.
        register_alice(edge, call_id="call-A", cseq=10, contact="<sip:alice@127.0.1.5:5060>")
        register_alice(edge, call_id="call-B", cseq=20, contact="<sip:alice@127.0.1.5:5070>")
        before = edge.bindings("alice")
        edge.clock.advance(10)
        resp = edge.register(
            phone_flow(5),
            "alice",
            PASSWORDS["alice"],
            call_id="call-B",
            cseq=3,  # older than call-B's stored CSeq 21
            contact=["<sip:alice@127.0.1.5:5060>", "<sip:alice@127.0.1.5:5070>"],
            expires=120,
        )
        assert resp.status == 500
        assert edge.bindings("alice") == before

    def test_contact_star_with_old_cseq_fails(self, edge: Edge) -> None:
        # RFC 3261 §10.3 step 6: same Call-ID and not a higher CSeq → abort, request fails.
        register_alice(edge, call_id="call-A", cseq=10)
        resp = edge.register(
            phone_flow(5),
            "alice",
            PASSWORDS["alice"],
            contact="*",
            expires=0,
            call_id="call-A",
            cseq=3,
        )
        assert resp.status == 500
        assert len(edge.bindings("alice")) == 1

    def test_outbound_reregister_from_new_contact_replaces_binding(self, edge: Edge) -> None:
        old_flow, new_flow = phone_flow(5, 5060), phone_flow(5, 5062)
        outbound = [("Supported", "outbound, path")]
        first = edge.register(
            old_flow,
            "alice",
            PASSWORDS["alice"],
            contact=f"<sip:alice@127.0.1.5:5060;ob>;+sip.instance={INSTANCE};reg-id=1",
            extra_headers=outbound,
            call_id="boot-1",
        )
        assert first.status == 200
        assert "outbound" in first.require
        # The phone reboots: new source port, new Contact URI, same instance and reg-id.
        second = edge.register(
            new_flow,
            "alice",
            PASSWORDS["alice"],
            contact=f"<sip:alice@127.0.1.5:5062;ob>;+sip.instance={INSTANCE};reg-id=1",
            extra_headers=outbound,
            call_id="boot-2",
        )
        assert second.status == 200
        assert "outbound" in second.require
        assert list(contacts_of(second)) == ["sip:alice@127.0.1.5:5062;ob"]
        (b,) = edge.bindings("alice")
        assert b.flow == new_flow
        assert (b.instance, b.reg_id) == ("urn:uuid:00000000-0000-1000-8000-00000000a11c", 1)
        added, removed = edge.changes[-1]
        assert [x.flow for x in added] == [new_flow]
        assert [x.flow for x in removed] == [old_flow]

    def test_no_require_outbound_without_reg_id(self, edge: Edge) -> None:
        ok = register_alice(edge, extra_headers=[("Supported", "outbound")])
        assert ok.require == []

    def test_path_recorded_and_echoed(self, edge: Edge) -> None:
        path = "<sip:p1.acme.test;lr>"
        ok = register_alice(edge, extra_headers=[("Supported", "path"), ("Path", path)])
        assert ok.get_all("path") == [path]
        (b,) = edge.bindings("alice")
        assert b.path == (path,)
        ringing = call_alice(edge, [phone_flow(5)])
        fwd = ringing.forwarded[phone_flow(5)]
        assert fwd.get_all("route") == [path]

    def test_another_lines_credentials_are_forbidden(self, edge: Edge) -> None:
        resp = edge.register(phone_flow(5), "alice", PASSWORDS["bob"], auth_user="bob")
        assert resp.status == 403
        assert edge.bindings("alice") == [] and edge.bindings("bob") == []

    def test_stale_nonce_is_rechallenged_with_stale_true(self, edge: Edge) -> None:
        resp = edge.register(
            phone_flow(5),
            "alice",
            PASSWORDS["alice"],
            before_answer=lambda: edge.clock.advance(301),
        )
        assert resp.status == 401
        assert resp.www_authenticate and all(c.stale for c in resp.www_authenticate)
        assert edge.bindings("alice") == []
        assert register_alice(edge, cseq=10).status == 200

    # --- NAT classification ------------------------------------------------------------
    def test_phone_without_translation_is_exposed(self, edge: Edge) -> None:
        register_alice(edge, 5)
        (b,) = edge.bindings("alice")
        assert b.nat == NatInfo(EXPOSED, ())
        assert b.nat.exposed and b.nat.verdict == "directly reachable from the Internet"
        assert b.nat.to_json()["exposed"] is True

    def test_private_contact_from_public_source_is_behind_nat(self, edge: Edge) -> None:
        flow = phone_flow(6, port=35432)
        resp = edge.register(
            flow, "alice", PASSWORDS["alice"], via_host="192.168.1.20", via_port=5060
        )
        assert resp.status == 200
        (b,) = edge.bindings("alice")
        assert str(b.contact) == "sip:alice@192.168.1.20:5060"
        assert b.nat.verdict == BEHIND_NAT == "behind NAT"
        assert b.nat.evidence == (
            "contact_private",
            "via_differs",
            "via_private",
            "port_differs",
            "contact_port_differs",
        )
        assert not b.nat.exposed

    def test_only_the_contact_betrays_the_nat(self, edge: Edge) -> None:
        resp = edge.register(
            phone_flow(6), "alice", PASSWORDS["alice"], contact="<sip:alice@192.168.1.20:5060>"
        )
        assert resp.status == 200
        (b,) = edge.bindings("alice")
        assert b.nat == NatInfo(BEHIND_NAT, ("contact_private",))

    def test_private_source_is_on_a_private_network(self, edge: Edge) -> None:
        flow = Flow("udp", EDGE_HOST, EDGE_PORT, "10.20.30.40", 5060)
        assert edge.register(flow, "alice", PASSWORDS["alice"]).status == 200
        (b,) = edge.bindings("alice")
        assert b.nat.verdict == PRIVATE == "on a private network"
        assert "source_private" in b.nat.evidence


# ======================================================================================
# Proxy: calls into the fleet
# ======================================================================================
class TestInboundCalls:
    def test_invite_is_forwarded_through_the_bindings_flow(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        ringing = call_alice(edge, [p5])
        out, caller = ringing.out, ringing.caller

        trying = only(out.sent, caller).response
        assert trying.status == 100 and trying.to.tag is None
        assert len(out.sent) == 2

        fwd_sent = only(out.sent, p5)
        assert fwd_sent.via_flow and fwd_sent.remote == ("127.0.1.5", 5060)
        fwd = ringing.forwarded[p5]
        assert str(fwd.uri) == "sip:alice@127.0.1.5:5060"
        top, second = fwd.vias
        assert (top.transport, top.host, top.port) == ("UDP", EDGE_HOST, EDGE_PORT)
        assert top.branch and top.branch.startswith("z9hG4bK")
        assert top.branch != out.request.via.branch
        assert second.branch == out.request.via.branch
        assert second.received == "127.0.2.1"
        assert fwd.max_forwards == 69
        rr = fwd.record_routes
        assert len(rr) == 2
        for entry in rr:
            assert isinstance(entry.uri, SipUri)
            assert (entry.uri.host, entry.uri.port, entry.uri.lr) == (EDGE_HOST, EDGE_PORT, True)
        assert rr_tokens(edge, fwd) == [p5, caller]
        assert fwd.body == SDP
        assert fwd.call_id == out.request.call_id
        assert edge.proxy.stats.forwarded == 1

    def test_dialog_responses_and_in_dialog_requests_follow_the_flows(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        ringing = call_alice(edge, [p5])
        caller, fwd, invite = ringing.caller, ringing.forwarded[p5], ringing.out.request

        # 180 and 200 from the phone reach the caller with the edge's Via removed.
        sent = phone_says(edge, p5, fwd, 180)
        ringing_resp = only(sent, caller).response
        assert ringing_resp.status == 180 and len(sent) == 1
        assert [v.branch for v in ringing_resp.vias] == [invite.via.branch]
        sent = phone_says(edge, p5, fwd, 200, extra=[("Content-Type", "application/sdp")])
        ok = only(sent, caller).response
        assert ok.status == 200 and len(sent) == 1
        assert [v.branch for v in ok.vias] == [invite.via.branch]
        assert len(ok.record_routes) == 2

        # The caller's ACK and BYE use the reversed Record-Route set and reach the phone.
        caller_routes = list(reversed(route_set(ok)))

        def from_caller(method: str, cseq: int) -> bytes:
            return in_dialog(
                caller,
                method,
                "sip:alice@127.0.1.5:5060",
                from_=invite.get("from") or "",
                to=ok.get("to") or "",
                call_id=invite.call_id,
                cseq=cseq,
                routes=caller_routes,
            )

        ack_sent = edge.receive(caller, from_caller("ACK", 1))
        ack = only(ack_sent, p5).request
        assert len(ack_sent) == 1
        assert ack.method == "ACK" and str(ack.uri) == "sip:alice@127.0.1.5:5060"
        assert ack.routes == [] and ack.via.host == EDGE_HOST and len(ack.vias) == 2
        assert ack.max_forwards == 69

        bye_sent = edge.receive(caller, from_caller("BYE", 2))
        bye = only(bye_sent, p5).request
        assert bye.method == "BYE" and bye.routes == []
        assert bye.via.host == EDGE_HOST
        bye_ok = phone_says(edge, p5, bye, 200)
        assert statuses(bye_ok, caller) == [200]

    def test_bye_from_the_phone_reaches_the_caller(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        ringing = call_alice(edge, [p5])
        caller, fwd, invite = ringing.caller, ringing.forwarded[p5], ringing.out.request
        phone_says(edge, p5, fwd, 200)
        # The callee's route set is the Record-Route list in order.
        bye_bytes = in_dialog(
            p5,
            "BYE",
            "sip:caller@127.0.2.1:5060",
            from_=f"<{ALICE}>;tag=phone-127.0.1.5",
            to=invite.get("from") or "",
            call_id=invite.call_id,
            cseq=77,
            routes=route_set(fwd),
        )
        sent = edge.receive(p5, bye_bytes)
        bye = only(sent, caller).request
        assert len(sent) == 1
        assert bye.method == "BYE" and str(bye.uri) == "sip:caller@127.0.2.1:5060"
        assert bye.routes == []
        assert [v.host for v in bye.vias] == [EDGE_HOST, "127.0.1.5"]
        ok = edge.receive(caller, answer(bye, 200))
        assert statuses(ok, p5) == [200]

    @pytest.mark.parametrize("forgery", ["tampered", "wrong-key", "no-token"])
    def test_forged_route_token_is_refused(self, edge: Edge, forgery: str) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        ringing = call_alice(edge, [p5])
        phone_says(edge, p5, ringing.forwarded[p5], 200)
        real = edge.tokens.encode(p5)
        if forgery == "tampered":
            token = real[:-3] + ("AAA" if real[-3:] != "AAA" else "BBB")
        elif forgery == "wrong-key":
            token = FlowTokens(b"another-key-0123456789-abcdefghijk").encode(
                Target("udp", "127.0.66.99", 5060)
            )
        else:
            token = ""
        user = f"{token}@" if token else ""
        scanner = scanner_flow(3)
        bye = in_dialog(
            scanner,
            "BYE",
            "sip:alice@127.0.1.5:5060",
            from_="<sip:+15550001111@127.0.2.1>;tag=caller-tag",
            to=f"<{ALICE}>;tag=phone-127.0.1.5",
            call_id=ringing.out.request.call_id,
            cseq=2,
            routes=[f"<sip:{user}{EDGE_HOST}:{EDGE_PORT};lr>"],
        )
        sent = edge.receive(scanner, bye)
        # Nothing is relayed anywhere; the sender gets silence (or at most a 403).
        assert all(s.where == scanner for s in sent), sent
        assert [s.response.status for s in sent] in ([], [403])
        assert edge.proxy.stats.forwarded == 1  # only the original INVITE

    def test_unregistered_and_unknown_users_get_the_same_480(self, edge: Edge) -> None:
        caller = upstream_flow()
        offline = edge.invite(caller, ALICE, from_uri="sip:100@127.0.2.1", call_id="c-1")
        unknown = edge.invite(
            caller, f"sip:dave@{DOMAIN}", from_uri="sip:100@127.0.2.1", call_id="c-1"
        )
        for out in (offline, unknown):
            assert [s.where for s in out.sent] == [caller]
        a, b = offline.responses()[0], unknown.responses()[0]
        assert (a.status, a.reason) == (b.status, b.reason) == (480, "Temporarily Unavailable")
        assert shape(a) == shape(b)

    def test_dead_stream_binding_is_not_tried(self, edge: Edge) -> None:
        tcp = phone_flow(5, port=49152, transport="tcp", conn_id=7)
        assert edge.register(tcp, "alice", PASSWORDS["alice"]).status == 200
        edge.out.dead.add(tcp)
        out = edge.invite(upstream_flow(), ALICE, from_uri="sip:100@127.0.2.1")
        assert [r.status for r in out.responses()] == [480]
        assert out.requests() == []

    def test_stream_binding_is_reached_over_its_connection(self, edge: Edge) -> None:
        tcp = phone_flow(5, port=49152, transport="tcp", conn_id=7)
        assert edge.register(tcp, "alice", PASSWORDS["alice"]).status == 200
        ringing = call_alice(edge, [tcp])
        fwd = ringing.forwarded[tcp]
        assert fwd.via.transport == "TCP"
        first_rr = fwd.record_routes[0].uri
        assert isinstance(first_rr, SipUri) and first_rr.transport == "tcp"
        assert edge.tokens.decode(first_rr.user or "") == tcp

    def test_fork_first_2xx_wins_and_ringing_branch_is_cancelled(self, edge: Edge) -> None:
        register_alice(edge, 5)
        register_alice(edge, 6)
        p5, p6 = phone_flow(5), phone_flow(6)
        ringing = call_alice(edge, [p5, p6])
        caller = ringing.caller
        f5, f6 = ringing.forwarded[p5], ringing.forwarded[p6]
        assert f5.via.branch != f6.via.branch
        assert rr_tokens(edge, f6) == [p6, caller]

        assert statuses(phone_says(edge, p6, f6, 180), caller) == [180]
        sent = phone_says(edge, p5, f5, 200)
        assert statuses(sent, caller) == [200]
        cancel = only(sent, p6).request
        assert cancel.method == "CANCEL"
        assert cancel.via.branch == f6.via.branch and cancel.cseq.number == f6.cseq.number
        assert str(cancel.uri) == str(f6.uri)
        assert edge.receive(p6, answer(cancel, 200)) == []
        sent = phone_says(edge, p6, f6, 487)
        assert statuses(sent, caller) == []  # the 487 is not relayed as a final
        ack = only(sent, p6).request
        assert ack.method == "ACK" and ack.via.branch == f6.via.branch
        assert ack.to.tag == "phone-127.0.1.6"

    def test_fork_cancel_waits_for_the_branchs_provisional(self, edge: Edge) -> None:
        register_alice(edge, 5)
        register_alice(edge, 6)
        p5, p6 = phone_flow(5), phone_flow(6)
        ringing = call_alice(edge, [p5, p6])
        sent = phone_says(edge, p5, ringing.forwarded[p5], 200)
        assert [s.where for s in sent] == [ringing.caller]  # p6 has said nothing yet
        sent = phone_says(edge, p6, ringing.forwarded[p6], 180)
        assert [s.request.method for s in sent if s.where == p6] == ["CANCEL"]
        assert statuses(sent, ringing.caller) == []  # too late to relay a 180

    def test_cancel_from_caller_while_ringing(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        ringing = call_alice(edge, [p5])
        caller, fwd, invite = ringing.caller, ringing.forwarded[p5], ringing.out.request
        phone_says(edge, p5, fwd, 180)

        sent = edge.receive(caller, cancel_for(invite))
        assert statuses(sent, caller) == [200]
        ok = only(sent, caller).response
        assert ok.cseq.method == "CANCEL"
        cancel = only(sent, p5).request
        assert cancel.method == "CANCEL" and cancel.via.branch == fwd.via.branch
        assert len(sent) == 2

        assert edge.receive(p5, answer(cancel, 200)) == []
        sent = phone_says(edge, p5, fwd, 487)
        assert statuses(sent, caller) == [487]
        terminated = only(sent, caller).response
        assert [v.branch for v in terminated.vias] == [invite.via.branch]
        ack = only(sent, p5).request
        assert ack.method == "ACK" and ack.via.branch == fwd.via.branch
        # The caller's ACK for the 487 ends at the edge.
        assert edge.receive(caller, ack_for_failure(invite, terminated)) == []

    def test_cancel_for_unknown_transaction_gets_481(self, edge: Edge) -> None:
        caller = upstream_flow()
        invite = parse(edge.invite_request(caller, ALICE, from_uri="sip:100@127.0.2.1"))
        assert isinstance(invite, Request)
        resp = edge.reply(caller, cancel_for(invite))
        assert resp.status == 481

    def test_max_forwards_zero_gets_483(self, edge: Edge) -> None:
        register_alice(edge, 5)
        out = edge.invite(upstream_flow(), ALICE, from_uri="sip:100@127.0.2.1", max_forwards=0)
        assert [r.status for r in out.responses()] == [483]
        assert out.requests() == []

    def test_unsupported_proxy_require_gets_420(self, edge: Edge) -> None:
        # RFC 3261 §16.3 step 5.
        register_alice(edge, 5)
        out = edge.invite(
            upstream_flow(),
            ALICE,
            from_uri="sip:100@127.0.2.1",
            extra_headers=[("Proxy-Require", "x-unknown-ext")],
        )
        assert out.requests() == []
        (resp,) = out.responses()
        assert resp.status == 420 and resp.get("unsupported") == "x-unknown-ext"

    def test_retransmitted_invite_creates_no_second_branch(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        caller = upstream_flow()
        data = edge.invite_request(caller, ALICE, from_uri="sip:100@127.0.2.1")
        first = edge.receive(caller, data)
        fwd = only(first, p5).request
        again = edge.receive(caller, data)
        assert statuses(again, caller) == [100] and len(again) == 1
        phone_says(edge, p5, fwd, 180)
        again = edge.receive(caller, data)
        assert statuses(again, caller) == [180] and len(again) == 1
        assert edge.proxy.stats.forwarded == 1

    def test_timer_b_without_any_answer_gives_408(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        ringing = call_alice(edge, [p5])
        sent = edge.advance(64 * T1 - 0.01)
        assert statuses(sent, ringing.caller) == []
        retransmits = [s.request for s in sent if s.where == p5]
        assert len(retransmits) == 6  # Timer A: 0.5, 1, 2, 4, 8, 16 s
        assert {r.via.branch for r in retransmits} == {ringing.forwarded[p5].via.branch}
        sent = edge.advance(0.02)
        assert statuses(sent, ringing.caller) == [408]
        assert only(sent, ringing.caller).response.to.tag is not None

    def test_timer_c_cancels_a_branch_ringing_too_long(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        ringing = call_alice(edge, [p5])
        fwd = ringing.forwarded[p5]
        phone_says(edge, p5, fwd, 180)
        edge.advance(170)
        edge.proxy.housekeeping()
        assert edge.out.take() == []
        edge.advance(11)
        edge.proxy.housekeeping()
        sent = edge.out.take()
        cancel = only(sent, p5).request
        assert cancel.method == "CANCEL" and cancel.via.branch == fwd.via.branch
        assert statuses(sent, ringing.caller) == []
        sent = phone_says(edge, p5, fwd, 487)
        assert statuses(sent, ringing.caller) == [487]

    def test_timer_c_is_reset_by_provisional_responses(self, edge: Edge) -> None:
        # RFC 3261 §16.7 step 2: a 101-199 response resets Timer C (to more than 3 min).
        register_alice(edge, 5)
        p5 = phone_flow(5)
        ringing = call_alice(edge, [p5])
        phone_says(edge, p5, ringing.forwarded[p5], 180)
        edge.advance(150)
        phone_says(edge, p5, ringing.forwarded[p5], 183)
        edge.advance(50)  # 200 s after the INVITE, 50 s after the last provisional
        edge.proxy.housekeeping()
        assert edge.out.take() == []

    def test_branch_silent_after_cancel_is_given_up(self, edge: Edge) -> None:
        # RFC 3261 §9.1: no final 64*T1 after the CANCEL → consider the branch cancelled;
        # §16.7 step 6: all branches done and no final → 408 to the caller.
        register_alice(edge, 5)
        p5 = phone_flow(5)
        ringing = call_alice(edge, [p5])
        phone_says(edge, p5, ringing.forwarded[p5], 180)
        edge.advance(181)
        edge.proxy.housekeeping()
        assert only(edge.out.take(), p5).request.method == "CANCEL"
        sent = edge.advance(64 * T1 + 1)  # the phone went away: no 200, no 487
        # One final 408 (retransmitted by the server transaction until the caller ACKs).
        assert set(statuses(sent, ringing.caller)) == {408}
        edge.advance(64 * T1 + 1)
        assert len(edge.proxy.table) == 0


# ======================================================================================
# Proxy: calls from phones
# ======================================================================================
class TestOutboundCalls:
    def test_call_without_credentials_gets_407_and_nothing_leaves(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        out = edge.invite(p5, OUTSIDE, from_uri=ALICE)
        assert [s.where for s in out.sent] == [p5]
        (resp,) = out.responses()
        assert resp.status == 407
        assert {c.realm for c in resp.proxy_authenticate} == {DOMAIN}
        assert resp.www_authenticate == []
        assert edge.receive(p5, ack_for_failure(out.request, resp)) == []

    def test_call_with_credentials_goes_upstream_without_them(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        out = edge.invite(
            p5, OUTSIDE, from_uri=ALICE, credentials_for=("alice", PASSWORDS["alice"])
        )
        assert out.request.get("proxy-authorization") is not None
        assert statuses(out.sent, p5) == [100]
        up = only(out.sent, UPSTREAM)
        fwd = up.request
        assert not up.via_flow and up.remote == ("127.0.2.1", 5060)
        assert fwd.get("proxy-authorization") is None
        assert str(fwd.uri) == OUTSIDE and fwd.max_forwards == 69
        assert fwd.via.host == EDGE_HOST and fwd.vias[1].host == "127.0.1.5"
        assert rr_tokens(edge, fwd) == [UPSTREAM, p5]

        # The upstream answers; the 200 goes back to the phone's flow.
        sent = edge.receive(
            upstream_flow(), answer(fwd, 200, tag="far", contact="<sip:gw@127.0.2.1>")
        )
        assert statuses(sent, p5) == [200]

    def test_other_lines_credentials_with_alices_from_is_forbidden(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        out = edge.invite(p5, OUTSIDE, from_uri=ALICE, credentials_for=("bob", PASSWORDS["bob"]))
        assert [s.where for s in out.sent] == [p5]
        assert [r.status for r in out.responses()] == [403]

    def test_phone_to_phone_call_needs_credentials_too(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p6 = phone_flow(6)
        out = edge.invite(p6, ALICE, from_uri=f"sip:bob@{DOMAIN}")
        assert [r.status for r in out.responses()] == [407]
        out = edge.invite(
            p6,
            ALICE,
            from_uri=f"sip:bob@{DOMAIN}",
            credentials_for=("bob", PASSWORDS["bob"]),
            call_id="c2",
        )
        assert only(out.sent, phone_flow(5)).request.get("proxy-authorization") is None

    def test_preloaded_route_from_a_stranger_is_not_followed(self, edge: Edge) -> None:
        register_alice(edge, 5)
        scanner = scanner_flow(1)
        out = edge.invite(
            scanner,
            ALICE,
            from_uri="sip:100@evil.test",
            extra_headers=[("Route", "<sip:127.0.66.99:5060;lr>")],
        )
        assert [s.where for s in out.sent if s.where != scanner] == []

    def test_captured_credentials_cannot_be_replayed_after_a_realm_flood(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        out = edge.invite(
            p5, OUTSIDE, from_uri=ALICE, credentials_for=("alice", PASSWORDS["alice"])
        )
        assert only(out.sent, UPSTREAM)
        captured = out.request.get("proxy-authorization") or ""

        def replay() -> Outgoing:
            return edge.invite(
                p5, OUTSIDE, from_uri=ALICE, extra_headers=[("Proxy-Authorization", captured)]
            )

        assert [r.status for r in replay().responses()] == [407]
        # A scanner asks for challenges in 10 001 made-up domains (over TCP: no lingering).
        flood = Flow("tcp", EDGE_HOST, EDGE_PORT, "127.0.66.7", 40000, conn_id=9)
        for i in range(10_001):
            edge.proxy.receive(
                sip_request(
                    "REGISTER",
                    f"sip:d{i}.test",
                    [
                        ("Via", via(flood, new_branch())),
                        ("Max-Forwards", "70"),
                        ("From", f"<sip:x@d{i}.test>;tag=1"),
                        ("To", f"<sip:x@d{i}.test>"),
                        ("Call-ID", f"flood-{i}"),
                        ("CSeq", "1 REGISTER"),
                    ],
                ),
                flood,
            )
        again = replay()
        assert [r.status for r in again.responses()] == [407]
        assert again.to(UPSTREAM) == []


# ======================================================================================
# Proxy: garbage, pings and housekeeping
# ======================================================================================
class TestRobustness:
    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"\x00\xff\xfe garbage",
            b"INVITE\r\n\r\n",
            b"INVITE sip:alice@acme.test SIP/2.0\r\nVia: nonsense\r\n\r\n",
            b"SIP/2.0 999 What\r\n\r\n",
            b"OPTIONS sip:x@y SIP/2.0\r\nContent-Length: 500\r\n\r\nshort",
        ],
    )
    def test_malformed_bytes_are_dropped_silently_and_counted(
        self, edge: Edge, data: bytes
    ) -> None:
        before = edge.proxy.stats.malformed
        assert edge.receive(scanner_flow(), data) == []
        assert edge.proxy.stats.malformed == before + 1

    @pytest.mark.parametrize("defect", ["no-call-id", "no-from", "two-to"])
    def test_messages_with_defects_get_silence(self, edge: Edge, defect: str) -> None:
        register_alice(edge, 5)
        flow = upstream_flow()
        headers = [
            ("Via", via(flow, new_branch())),
            ("Max-Forwards", "70"),
            ("From", "<sip:100@127.0.2.1>;tag=x"),
            ("To", f"<{ALICE}>"),
            ("Call-ID", "defective-1"),
            ("CSeq", "1 INVITE"),
        ]
        if defect == "no-call-id":
            headers = [h for h in headers if h[0] != "Call-ID"]
        elif defect == "no-from":
            headers = [h for h in headers if h[0] != "From"]
        else:
            headers.append(("To", "<sip:bob@acme.test>"))
        before = edge.proxy.table.server_count
        assert edge.receive(flow, sip_request("INVITE", ALICE, headers)) == []
        assert edge.proxy.table.server_count == before
        assert edge.proxy.stats.forwarded == 0

    def test_bad_authorization_header_leaves_no_transaction_behind(self, edge: Edge) -> None:
        edge.proxy.table.max_server = 3
        scanner = scanner_flow(5)
        for i in range(3):
            data = edge.register_request(
                scanner, "alice", call_id=f"bad-{i}", authorization=("Authorization", "Digest !!")
            )
            assert edge.receive(scanner, data) == []
        assert edge.proxy.stats.malformed == 3
        edge.advance(64 * T1 + 1)  # anything legitimately lingering is gone by now
        assert edge.proxy.table.server_count == 0
        first = edge.reply(phone_flow(5), edge.register_request(phone_flow(5), "alice"))
        assert first.status == 401

    def test_options_to_the_edge_itself_gets_200(self, edge: Edge) -> None:
        p5 = phone_flow(5)
        headers = [
            ("Via", via(p5, new_branch())),
            ("Max-Forwards", "70"),
            ("From", f"<{ALICE}>;tag=ping"),
            ("To", f"<sip:{EDGE_HOST}:{EDGE_PORT}>"),
            ("Call-ID", "ping-1"),
            ("CSeq", "1 OPTIONS"),
        ]
        resp = edge.reply(p5, sip_request("OPTIONS", f"sip:{EDGE_HOST}:{EDGE_PORT}", headers))
        assert resp.status == 200 and resp.to.tag is not None
        assert resp.get("server") == "spitguard-test"

    def test_stray_response_is_counted_and_dropped(self, edge: Edge) -> None:
        data = (
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnothing\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: s1\r\nCSeq: 1 OPTIONS\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        assert edge.receive(scanner_flow(), data) == []
        assert edge.proxy.stats.stray_responses == 1


class TestKeepalive:
    def _register_both(self, edge: Edge) -> tuple[Flow, Flow]:
        udp = phone_flow(5)
        tcp = phone_flow(7, port=49152, transport="tcp", conn_id=3)
        assert edge.register(udp, "alice", PASSWORDS["alice"]).status == 200
        assert edge.register(tcp, "bob", PASSWORDS["bob"]).status == 200
        edge.out.take()
        return udp, tcp

    def test_udp_gets_options_on_its_own_flow_tcp_gets_crlf(self, edge: Edge) -> None:
        udp, tcp = self._register_both(edge)
        assert edge.proxy.keepalive(udp_method="options") == 2
        sent = edge.out.take()
        ping = only(sent, udp).request
        assert ping.method == "OPTIONS" and str(ping.uri) == "sip:alice@127.0.1.5:5060"
        assert ping.via.host == EDGE_HOST and ping.via.branch
        assert only(sent, tcp).data == b"\r\n\r\n"
        # The phone's 200 to the ping is a stray response for the proxy, nothing more.
        assert edge.receive(udp, answer(ping, 200)) == []

    def test_crlf_for_udp_and_streams_on_request(self, edge: Edge) -> None:
        udp, tcp = self._register_both(edge)
        assert edge.proxy.keepalive(udp_method="crlf", streams=False) == 1
        sent = edge.out.take()
        assert [(s.where, s.data) for s in sent] == [(udp, b"\r\n\r\n")]
        assert edge.proxy.keepalive(udp_method="crlf") == 2
        sent = edge.out.take()
        assert {(s.where, s.data) for s in sent} == {(udp, b"\r\n\r\n"), (tcp, b"\r\n\r\n")}

    def test_expired_bindings_are_not_pinged(self, edge: Edge) -> None:
        self._register_both(edge)
        edge.clock.advance(3601)
        assert edge.proxy.keepalive(udp_method="options") == 0
        assert edge.out.take() == []


# ======================================================================================
# Flow tokens
# ======================================================================================
TOKENS = FlowTokens(TOKEN_KEY)
flows = st.builds(
    Flow,
    st.sampled_from(["udp", "tcp", "tls"]),
    st.just(EDGE_HOST),
    st.integers(1, 65535),
    st.ip_addresses().map(str),
    st.integers(1, 65535),
    st.integers(0, 2**40),
)
targets = st.builds(
    Target,
    st.sampled_from(["udp", "tcp", "tls"]),
    st.one_of(
        st.ip_addresses().map(str), st.from_regex(r"[a-z][a-z0-9-]{0,20}\.test", fullmatch=True)
    ),
    st.integers(1, 65535),
)


class TestFlowTokens:
    def test_round_trip(self) -> None:
        flow = phone_flow(5, port=40000, transport="tcp", conn_id=12)
        assert TOKENS.decode(TOKENS.encode(flow)) == flow
        assert TOKENS.decode(TOKENS.encode(UPSTREAM)) == UPSTREAM

    @given(flows | targets)
    def test_round_trip_property(self, where: Flow | Target) -> None:
        token = TOKENS.encode(where)
        assert TOKENS.decode(token) == where
        # Usable as the user part of a SIP URI as is.
        assert sip_uri(f"sip:{token}@{EDGE_HOST};lr").user == token

    def test_tampering_and_wrong_key(self) -> None:
        token = TOKENS.encode(phone_flow(5))
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        for i in range(len(raw)):  # every byte of MAC and payload
            bad = bytearray(raw)
            bad[i] ^= 0x01
            forged = base64.urlsafe_b64encode(bytes(bad)).rstrip(b"=").decode()
            assert TOKENS.decode(forged) is None, i
        # The token is sealed: the phone's address is not readable in it.
        assert b"127.0.1.5" not in raw and "127.0.1.5" not in token
        assert FlowTokens(b"some-other-key-0123456789-abcdefgh").decode(token) is None
        assert TOKENS.decode(token[:-1]) is None
        assert TOKENS.decode(token + "A") is None

    def test_short_key_is_refused(self) -> None:
        with pytest.raises(ValueError, match="32 bytes"):
            FlowTokens(b"short")

    @pytest.mark.parametrize("garbage", ["", "x", "====", "é", "a" * 300, "not a token!", "%00"])
    def test_garbage_is_none(self, garbage: str) -> None:
        assert TOKENS.decode(garbage) is None

    @settings(max_examples=300)
    @given(st.text(max_size=300))
    def test_arbitrary_text_never_raises(self, text: str) -> None:
        assert TOKENS.decode(text) is None


# ======================================================================================
# Location service
# ======================================================================================
def binding(
    contact: str,
    *,
    q: float | None = None,
    expires_at: float = 2000.0,
    flow: Flow | None = None,
    aor: str = ALICE,
) -> Binding:
    return Binding(
        aor=aor,
        key=contact,
        contact=sip_uri(contact),
        tenant_id=1,
        call_id="c",
        cseq=1,
        expires_at=expires_at,
        flow=flow or phone_flow(5),
        received_at=1000.0,
        nat=NatInfo(EXPOSED, ()),
        q=q,
    )


class TestLocation:
    def test_lookup_orders_by_q_highest_first(self) -> None:
        loc = Location()
        for contact, q in [
            ("sip:a@h1", 0.5),
            ("sip:a@h2", None),
            ("sip:a@h3", 0.9),
            ("sip:a@h4", 0.1),
        ]:
            loc.put(binding(contact, q=q))
        assert [b.key for b in loc.lookup(ALICE, 1000.0)] == [
            "sip:a@h2",
            "sip:a@h3",
            "sip:a@h1",
            "sip:a@h4",
        ]
        assert loc.lookup("sip:nobody@acme.test", 1000.0) == []

    def test_expiry(self) -> None:
        loc = Location()
        loc.put(binding("sip:a@h1", expires_at=1500.0))
        loc.put(binding("sip:a@h2", expires_at=2500.0, flow=phone_flow(6)))
        assert len(loc.lookup(ALICE, 1499.0)) == 2
        assert [b.key for b in loc.lookup(ALICE, 1500.0)] == ["sip:a@h2"]
        gone = loc.expire(1600.0)
        assert [b.key for b in gone] == ["sip:a@h1"]
        assert len(loc) == 1
        assert not loc.has_flow_from("udp", "127.0.1.5", 5060)
        assert loc.expire(3000.0) and len(loc) == 0 and loc.lookup(ALICE, 0.0) == []

    def test_has_flow_from_counts_bindings_per_flow(self) -> None:
        loc = Location()
        p5 = phone_flow(5)
        loc.put(binding("sip:a@h1", flow=p5))
        loc.put(binding("sip:b@h1", flow=p5, aor=f"sip:bob@{DOMAIN}"))
        assert loc.has_flow_from("udp", "127.0.1.5", 5060)
        assert not loc.has_flow_from("tcp", "127.0.1.5", 5060)
        assert not loc.has_flow_from("udp", "127.0.1.5", 5061)
        assert loc.has_source_host("127.0.1.5") and not loc.has_source_host("127.0.66.1")
        assert loc.remove(ALICE, "sip:a@h1") is not None
        assert loc.has_flow_from("udp", "127.0.1.5", 5060)  # bob still uses that flow
        # Replacing a binding moves it to the new flow.
        old = loc.put(binding("sip:b@h1", flow=phone_flow(6), aor=f"sip:bob@{DOMAIN}"))
        assert old is not None and old.flow == p5
        assert not loc.has_flow_from("udp", "127.0.1.5", 5060)
        assert loc.has_flow_from("udp", "127.0.1.6", 5060)
        assert loc.remove(ALICE, "sip:a@h1") is None


# ======================================================================================
# Push re-sync: NOTIFY check-sync from the edge through the phone's own flow
# ======================================================================================
class TestCheckSync:
    def _notify(self, edge: Edge, p5: Flow, outcomes: list[str]) -> Request:
        (b,) = edge.bindings("alice")
        edge.proxy.send_check_sync(b, outcomes.append)
        (sent,) = edge.out.take()
        assert sent.remote == (p5.remote_host, p5.remote_port)
        req = sent.request
        assert req.method == "NOTIFY" and req.get("event") == "check-sync"
        assert str(req.uri) == str(b.contact)
        return req

    def test_phone_that_accepts_answers_200(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        outcomes: list[str] = []
        notify = self._notify(edge, p5, outcomes)
        edge.receive(p5, answer(notify, 200, tag="ph"))
        assert outcomes == ["ok"]

    def test_phone_challenge_is_answered_with_the_line_credentials(self, edge: Edge) -> None:
        # Polycom requestValidation method "digest": the phone challenges with realm
        # PolycomSPIP and the line's own credentials.
        register_alice(edge, 5)
        p5 = phone_flow(5)
        outcomes: list[str] = []
        notify = self._notify(edge, p5, outcomes)
        server = DigestServer(b"phone-secret-0123456789", "PolycomSPIP", algorithms=("MD5",))
        (challenge,) = server.challenge(0.0)
        fields = [("WWW-Authenticate", format_challenge(challenge))]
        out = edge.receive(p5, answer(notify, 401, tag="ph", extra=fields))
        (retry,) = [s for s in out if s.remote == (p5.remote_host, p5.remote_port)]
        authorized = retry.request
        assert authorized.method == "NOTIFY" and authorized.cseq.number == 2
        (creds,) = authorized.authorization
        lookup = ha1_from_passwords(lambda u, r: PASSWORDS["alice"] if u == "alice" else None)
        assert server.verify(creds, method="NOTIFY", ha1=lookup, now=1.0) is DigestResult.OK
        assert outcomes == []
        edge.receive(p5, answer(authorized, 200, tag="ph"))
        assert outcomes == ["ok-challenged"]

    def test_refusal_and_silence_are_reported(self, edge: Edge) -> None:
        register_alice(edge, 5)
        p5 = phone_flow(5)
        outcomes: list[str] = []
        notify = self._notify(edge, p5, outcomes)
        edge.receive(p5, answer(notify, 400, tag="ph"))
        assert outcomes == ["rejected:400"]
        outcomes.clear()
        self._notify(edge, p5, outcomes)
        edge.advance(64 * T1 + 1)  # the phone never answers: Timer F
        assert outcomes == ["timeout"]
