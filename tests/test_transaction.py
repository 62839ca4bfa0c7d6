"""RFC 3261 §17 transaction machines (with RFC 6026), matching keys and the table.

No sleeping anywhere: the clock is the `now` argument, advanced by hand or to the
deadlines the machines expose.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spitguard.sip import Request, Response, make_response, parse
from spitguard.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Deliver,
    Send,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    Terminated,
    Timeout,
    Timers,
    Transaction,
    TransactionTable,
    TransportError,
    TxEvent,
    build_ack,
    build_cancel,
    cancel_target_key,
    client_key,
    is_reliable_transport,
    new_client_transaction,
    new_server_transaction,
    server_key,
)

# What the proxy forwards downstream: its own Via on top, the phone's below, two Routes.
INVITE = """\
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP proxy.spitguard.example:5060;branch=z9hG4bKprx1
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKphone1;received=192.0.2.1
Route: <sip:p1.example.com;lr>
Route: <sip:p2.example.com;lr>
Max-Forwards: 69
To: Bob <sip:bob@biloxi.example.com>
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.atlanta.example.com>
Content-Type: application/sdp
Content-Length: 5

v=0
"""

OPTIONS = """\
OPTIONS sip:carol@chicago.example.com SIP/2.0
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKopt1
Max-Forwards: 70
To: <sip:carol@chicago.example.com>
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710
CSeq: 63104 OPTIONS
Content-Length: 0

"""

# An RFC 2543 phone: no magic cookie in the branch (or no branch at all).
OLD_INVITE = """\
INVITE sip:bob@10.0.0.7 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.9:5060{branch}
To: <sip:bob@10.0.0.7>
From: <sip:alice@10.0.0.9>;tag=old1
Call-ID: 12345@10.0.0.9
CSeq: 1 INVITE
Content-Length: 0

"""

OLD_ACK = """\
ACK sip:bob@10.0.0.7 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.9:5060{branch}
To: <sip:bob@10.0.0.7>;tag=srv486
From: <sip:alice@10.0.0.9>;tag=old1
Call-ID: 12345@10.0.0.9
CSeq: 1 ACK
Content-Length: 0

"""


def request(text: str, **fmt: str) -> Request:
    msg = parse((text.format(**fmt) if fmt else text).replace("\n", "\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def response_to(req: Request, status: int, tag: str | None = "b0b") -> Response:
    """A response as it arrives off the wire."""
    msg = parse(make_response(req, status, to_tag=tag).to_bytes())
    assert isinstance(msg, Response)
    return msg


def ack_for(invite: Request, resp: Response) -> Request:
    """The ACK a phone sends for a non-2xx: same branch as its INVITE."""
    msg = parse(build_ack(invite, resp).to_bytes())
    assert isinstance(msg, Request)
    return msg


def state(tx: Transaction) -> State:
    """Read through a call so mypy does not narrow `tx.state` between steps."""
    return tx.state


def sent(events: list[TxEvent]) -> list[Request | Response]:
    return [e.message for e in events if isinstance(e, Send)]


def delivered(events: list[TxEvent]) -> list[Request | Response]:
    return [e.message for e in events if isinstance(e, Deliver)]


def run_timers(tx: Transaction, until: float) -> list[tuple[float, list[TxEvent]]]:
    """Advance the clock deadline by deadline, as the adapter would."""
    out: list[tuple[float, list[TxEvent]]] = []
    while (deadline := tx.next_deadline()) is not None and deadline <= until:
        out.append((deadline, tx.on_timer(deadline)))
    return out


def intervals(times: list[float], start: float = 0.0) -> list[float]:
    points = [start, *times]
    return [b - a for a, b in itertools.pairwise(points)]


# --- client INVITE (Figure 5 + RFC 6026) --------------------------------------------------


def test_client_invite_calling_sends_and_arms_a_and_b() -> None:
    invite = request(INVITE)
    tx = ClientInviteTransaction(invite, reliable=False)
    assert state(tx) is State.CALLING
    events = tx.start(0.0)
    assert events == [Send(invite)]
    assert tx.pending_timers() == {"A": 0.5, "B": 32.0}
    assert tx.next_deadline() == 0.5
    with pytest.raises(RuntimeError):
        tx.start(0.0)


def test_client_invite_timer_a_doubles_over_udp_then_timer_b_times_out() -> None:
    invite = request(INVITE)
    tx = ClientInviteTransaction(invite, reliable=False)
    tx.start(0.0)
    fired = run_timers(tx, 100.0)
    retransmits = [t for t, ev in fired if ev and all(isinstance(e, Send) for e in ev)]
    assert intervals(retransmits) == [0.5, 1, 2, 4, 8, 16]
    for _, ev in fired[:-1]:
        assert ev == [Send(invite, retransmit=True)]
    last_time, last = fired[-1]
    assert last_time == 32.0
    assert last == [Timeout("B"), Terminated()]
    assert state(tx) is State.TERMINATED
    assert tx.next_deadline() is None


def test_client_invite_reliable_never_retransmits_but_still_times_out() -> None:
    tx = ClientInviteTransaction(request(INVITE), reliable=True)
    tx.start(10.0)
    assert tx.pending_timers() == {"B": 42.0}
    fired = run_timers(tx, 100.0)
    assert fired == [(42.0, [Timeout("B"), Terminated()])]


def test_client_invite_late_wakeup_does_not_burst() -> None:
    invite = request(INVITE)
    tx = ClientInviteTransaction(invite, reliable=False)
    tx.start(0.0)
    assert tx.on_timer(10.0) == [Send(invite, retransmit=True)]  # once, not four times
    assert tx.pending_timers() == {"A": 11.0, "B": 32.0}


def test_client_invite_calling_to_proceeding_stops_a_and_b() -> None:
    invite = request(INVITE)
    tx = ClientInviteTransaction(invite, reliable=False)
    tx.start(0.0)
    ringing = response_to(invite, 180)
    assert tx.on_response(ringing, 0.2) == [Deliver(ringing)]
    assert state(tx) is State.PROCEEDING
    assert tx.next_deadline() is None  # Timer C is the proxy's business
    again = response_to(invite, 183)
    assert tx.on_response(again, 5.0) == [Deliver(again)]
    assert state(tx) is State.PROCEEDING
    assert tx.on_timer(1000.0) == []


def test_client_invite_proceeding_to_completed_acks_and_waits_timer_d() -> None:
    invite = request(INVITE)
    tx = ClientInviteTransaction(invite, reliable=False)
    tx.start(0.0)
    tx.on_response(response_to(invite, 180), 0.1)
    busy = response_to(invite, 486)
    events = tx.on_response(busy, 3.0)
    assert state(tx) is State.COMPLETED
    assert delivered(events) == [busy]
    assert sent(events) == [tx.ack]
    assert tx.pending_timers() == {"D": 35.0}
    assert run_timers(tx, 100.0) == [(35.0, [Terminated()])]


def test_client_invite_calling_to_completed_directly() -> None:
    invite = request(INVITE)
    tx = ClientInviteTransaction(invite, reliable=False)
    tx.start(0.0)
    events = tx.on_response(response_to(invite, 603), 1.0)
    assert state(tx) is State.COMPLETED
    assert [type(e) for e in events] == [Deliver, Send]
    assert set(tx.pending_timers()) == {"D"}  # A and B are gone


def test_client_invite_reliable_completed_terminates_at_once() -> None:
    invite = request(INVITE)
    tx = ClientInviteTransaction(invite, reliable=True)
    tx.start(0.0)
    events = tx.on_response(response_to(invite, 486), 1.0)
    assert [type(e) for e in events] == [Deliver, Send, Terminated]
    assert tx.terminated


def test_client_invite_ack_for_486_has_rfc_fields() -> None:
    invite = request(INVITE)
    tx = ClientInviteTransaction(invite, reliable=False)
    tx.start(0.0)
    busy = response_to(invite, 486, tag="busy77")
    events = tx.on_response(busy, 1.0)
    (ack_msg,) = sent(events)
    ack = parse(ack_msg.to_bytes())
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert str(ack.uri) == "sip:bob@biloxi.example.com"
    assert ack.call_id == invite.call_id
    assert ack.get("from") == invite.get("from")
    assert ack.from_.tag == "1928301774"
    assert ack.get("to") == busy.get("to")
    assert ack.to.tag == "busy77"
    assert (ack.cseq.number, ack.cseq.method) == (314159, "ACK")
    assert ack.get_all("via") == ["SIP/2.0/UDP proxy.spitguard.example:5060;branch=z9hG4bKprx1"]
    assert ack.via == invite.via
    assert ack.get_all("route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert ack.max_forwards == 70
    assert ack.get("content-length") == "0"
    assert ack.body == b""
    assert ack.defects == ()
    assert ack.get("contact") is None and ack.get("content-type") is None


def test_client_invite_retransmitted_486_resends_same_ack_bytes() -> None:
    invite = request(INVITE)
    tx = ClientInviteTransaction(invite, reliable=False)
    tx.start(0.0)
    first = sent(tx.on_response(response_to(invite, 486), 1.0))[0].to_bytes()
    for t in (1.5, 2.5, 4.5):
        events = tx.on_response(response_to(invite, 486), t)
        assert len(events) == 1 and isinstance(events[0], Send)
        assert events[0].retransmit
        assert events[0].message.to_bytes() == first
    assert state(tx) is State.COMPLETED
    # Stray 1xx/2xx in Completed are ignored.
    assert tx.on_response(response_to(invite, 180), 5.0) == []
    assert tx.on_response(response_to(invite, 200), 5.0) == []


def test_client_invite_2xx_goes_to_accepted_and_keeps_delivering_until_timer_m() -> None:
    invite = request(INVITE)
    tx = ClientInviteTransaction(invite, reliable=True)  # Timer M applies on any transport
    tx.start(0.0)
    tx.on_response(response_to(invite, 180), 0.5)
    ok = response_to(invite, 200)
    assert tx.on_response(ok, 2.0) == [Deliver(ok)]
    assert state(tx) is State.ACCEPTED
    assert tx.ack is None  # the ACK for a 2xx is end-to-end, not ours
    assert tx.pending_timers() == {"M": 34.0}
    retrans = response_to(invite, 200)
    forked = response_to(invite, 200, tag="fork2")
    assert tx.on_response(retrans, 2.5) == [Deliver(retrans)]
    assert tx.on_response(forked, 3.0) == [Deliver(forked)]
    assert tx.on_response(response_to(invite, 180), 3.0) == []
    assert tx.on_response(response_to(invite, 486), 3.0) == []
    assert run_timers(tx, 100.0) == [(34.0, [Terminated()])]


def test_client_invite_calling_to_accepted_directly() -> None:
    invite = request(INVITE)
    tx = ClientInviteTransaction(invite, reliable=False)
    tx.start(0.0)
    tx.on_response(response_to(invite, 200), 0.7)
    assert state(tx) is State.ACCEPTED
    assert tx.pending_timers() == {"M": 32.7}


@pytest.mark.parametrize("prepare", ["calling", "completed"])
def test_client_invite_transport_error(prepare: str) -> None:
    invite = request(INVITE)
    tx = ClientInviteTransaction(invite, reliable=False)
    tx.start(0.0)
    if prepare == "completed":
        tx.on_response(response_to(invite, 486), 1.0)
    assert tx.on_transport_error(1.0) == [TransportError(), Terminated()]
    assert tx.terminated
    assert tx.on_transport_error(1.0) == []
    assert tx.on_response(response_to(invite, 486), 1.0) == []


def test_client_invite_rejects_other_methods() -> None:
    with pytest.raises(ValueError):
        ClientInviteTransaction(request(OPTIONS), reliable=False)


# --- client non-INVITE (Figure 6) -------------------------------------------------------


def test_client_non_invite_timer_e_doubles_capped_at_t2_then_timer_f() -> None:
    options = request(OPTIONS)
    tx = ClientNonInviteTransaction(options, reliable=False)
    assert state(tx) is State.TRYING
    assert tx.start(0.0) == [Send(options)]
    assert tx.pending_timers() == {"E": 0.5, "F": 32.0}
    fired = run_timers(tx, 100.0)
    retransmits = [t for t, ev in fired if ev == [Send(options, retransmit=True)]]
    assert intervals(retransmits) == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]
    assert fired[-1] == (32.0, [Timeout("F"), Terminated()])
    assert len(fired) == len(retransmits) + 1


def test_client_non_invite_proceeding_retransmits_every_t2() -> None:
    options = request(OPTIONS)
    tx = ClientNonInviteTransaction(options, reliable=False)
    tx.start(0.0)
    tx.on_timer(0.5)  # next E at 1.5 (interval 1)
    trying = response_to(options, 100, tag=None)
    assert tx.on_response(trying, 1.0) == [Deliver(trying)]
    assert state(tx) is State.PROCEEDING
    assert tx.pending_timers()["E"] == 1.5  # the running timer is left alone
    fired = run_timers(tx, 14.0)
    assert [t for t, _ in fired] == [1.5, 5.5, 9.5, 13.5]
    again = response_to(options, 100, tag=None)
    assert tx.on_response(again, 14.0) == [Deliver(again)]
    assert state(tx) is State.PROCEEDING


def test_client_non_invite_timer_f_in_proceeding() -> None:
    options = request(OPTIONS)
    tx = ClientNonInviteTransaction(options, reliable=True)
    tx.start(0.0)
    tx.on_response(response_to(options, 100, tag=None), 1.0)
    assert tx.pending_timers() == {"F": 32.0}
    assert run_timers(tx, 100.0) == [(32.0, [Timeout("F"), Terminated()])]


def test_client_non_invite_reliable_has_no_timer_e() -> None:
    tx = ClientNonInviteTransaction(request(OPTIONS), reliable=True)
    tx.start(0.0)
    assert tx.pending_timers() == {"F": 32.0}


@pytest.mark.parametrize("via_proceeding", [False, True])
def test_client_non_invite_to_completed_then_timer_k(via_proceeding: bool) -> None:
    options = request(OPTIONS)
    tx = ClientNonInviteTransaction(options, reliable=False)
    tx.start(0.0)
    if via_proceeding:
        tx.on_response(response_to(options, 100, tag=None), 0.2)
    ok = response_to(options, 200)
    assert tx.on_response(ok, 2.0) == [Deliver(ok)]
    assert state(tx) is State.COMPLETED
    assert tx.pending_timers() == {"K": 7.0}
    assert tx.on_response(response_to(options, 200), 3.0) == []  # absorbed
    assert tx.on_response(response_to(options, 100, tag=None), 3.0) == []
    assert run_timers(tx, 100.0) == [(7.0, [Terminated()])]


def test_client_non_invite_reliable_completed_terminates_at_once() -> None:
    options = request(OPTIONS)
    tx = ClientNonInviteTransaction(options, reliable=True)
    tx.start(0.0)
    events = tx.on_response(response_to(options, 404), 1.0)
    assert [type(e) for e in events] == [Deliver, Terminated]


def test_client_non_invite_transport_error() -> None:
    tx = ClientNonInviteTransaction(request(OPTIONS), reliable=False)
    tx.start(0.0)
    assert tx.on_transport_error(0.0) == [TransportError(), Terminated()]
    assert tx.on_timer(100.0) == []


def test_custom_timers() -> None:
    timers = Timers(t1=0.25, t2=1.0, t4=2.0)
    options = request(OPTIONS)
    tx = ClientNonInviteTransaction(options, reliable=False, timers=timers)
    tx.start(0.0)
    fired = run_timers(tx, 100.0)
    assert intervals([t for t, _ in fired[:-1]]) == [0.25, 0.5] + [1.0] * 15
    assert fired[-1] == (16.0, [Timeout("F"), Terminated()])
    with pytest.raises(ValueError):
        Timers(t1=1.0, t2=0.5)
    with pytest.raises(ValueError):
        Timers(t1=0.0)


def test_client_non_invite_rejects_invite_and_ack() -> None:
    with pytest.raises(ValueError):
        ClientNonInviteTransaction(request(INVITE), reliable=False)


@given(
    t1=st.floats(min_value=0.01, max_value=2.0),
    factor=st.floats(min_value=1.0, max_value=16.0),
)
def test_client_non_invite_intervals_never_exceed_t2(t1: float, factor: float) -> None:
    timers = Timers(t1=t1, t2=t1 * factor)
    tx = ClientNonInviteTransaction(request(OPTIONS), reliable=False, timers=timers)
    tx.start(0.0)
    fired = run_timers(tx, 1e6)
    times = [t for t, _ in fired]
    assert all(b - a <= timers.t2 * (1 + 1e-9) for a, b in itertools.pairwise(times))
    assert times[-1] == pytest.approx(timers.timeout)
    assert tx.terminated


# --- server INVITE (Figure 7 + RFC 6026) --------------------------------------------------


def server_invite(reliable: bool = False) -> tuple[Request, ServerInviteTransaction]:
    invite = request(INVITE)
    tx = ServerInviteTransaction(invite, reliable=reliable)
    assert tx.start(0.0) == [Deliver(invite)]
    assert state(tx) is State.PROCEEDING
    assert tx.next_deadline() is None
    return invite, tx


def test_server_invite_retransmission_resends_last_provisional() -> None:
    invite, tx = server_invite()
    assert tx.on_request(request(INVITE), 0.1) == []  # nothing sent yet
    trying = make_response(invite, 100)
    assert tx.send_response(trying, 0.1) == [Send(trying)]
    assert tx.on_request(request(INVITE), 0.5) == [Send(trying, retransmit=True)]
    ringing = make_response(invite, 180, to_tag="srv")
    assert tx.send_response(ringing, 1.0) == [Send(ringing)]
    assert tx.on_request(request(INVITE), 1.5) == [Send(ringing, retransmit=True)]
    assert state(tx) is State.PROCEEDING
    assert tx.on_request(ack_for(invite, response_to(invite, 486)), 1.6) == []  # stray ACK


def test_server_invite_completed_timer_g_capped_and_h_timeout() -> None:
    invite, tx = server_invite()
    busy = make_response(invite, 486, to_tag="srv")
    assert tx.send_response(busy, 0.0) == [Send(busy)]
    assert state(tx) is State.COMPLETED
    assert tx.pending_timers() == {"G": 0.5, "H": 32.0}
    fired = run_timers(tx, 100.0)
    resends = [t for t, ev in fired if ev == [Send(busy, retransmit=True)]]
    assert intervals(resends) == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]
    assert fired[-1] == (32.0, [Timeout("H"), Terminated()])


def test_server_invite_completed_absorbs_invite_by_resending_final() -> None:
    invite, tx = server_invite()
    busy = make_response(invite, 486, to_tag="srv")
    tx.send_response(busy, 0.0)
    assert tx.on_request(request(INVITE), 0.2) == [Send(busy, retransmit=True)]
    assert tx.send_response(make_response(invite, 500), 0.3) == []  # discarded
    assert tx.send_response(make_response(invite, 200, to_tag="x"), 0.3) == []


def test_server_invite_ack_confirms_then_timer_i() -> None:
    invite, tx = server_invite()
    busy = make_response(invite, 486, to_tag="srv")
    tx.send_response(busy, 0.0)
    ack = ack_for(invite, busy)
    assert server_key(ack) == tx.key
    assert tx.on_request(ack, 2.0) == []
    assert state(tx) is State.CONFIRMED
    assert tx.pending_timers() == {"I": 7.0}
    assert tx.on_request(ack, 3.0) == []  # ACK retransmission absorbed
    assert tx.on_request(request(INVITE), 3.0) == []
    assert run_timers(tx, 100.0) == [(7.0, [Terminated()])]


def test_server_invite_reliable_no_timer_g_and_ack_terminates() -> None:
    invite, tx = server_invite(reliable=True)
    busy = make_response(invite, 486, to_tag="srv")
    tx.send_response(busy, 0.0)
    assert tx.pending_timers() == {"H": 32.0}
    assert tx.on_request(ack_for(invite, busy), 1.0) == [Terminated()]


def test_server_invite_reliable_timer_h() -> None:
    invite, tx = server_invite(reliable=True)
    tx.send_response(make_response(invite, 486, to_tag="srv"), 0.0)
    assert run_timers(tx, 100.0) == [(32.0, [Timeout("H"), Terminated()])]


def test_server_invite_2xx_accepted_absorbs_invites_and_passes_acks() -> None:
    invite, tx = server_invite()
    ok = make_response(invite, 200, to_tag="srv")
    assert tx.send_response(ok, 1.0) == [Send(ok)]
    assert state(tx) is State.ACCEPTED
    assert tx.pending_timers() == {"L": 33.0}
    assert tx.on_request(request(INVITE), 1.5) == []
    ack2xx = request(OLD_ACK.replace("10.0.0.9:5060{branch}", "pc33.example.com;branch=z9hG4bKe2e"))
    assert tx.on_request(ack2xx, 2.0) == [Deliver(ack2xx)]
    again = make_response(invite, 200, to_tag="srv")
    assert tx.send_response(again, 2.0) == [Send(again)]  # proxied 2xx retransmission
    assert tx.send_response(make_response(invite, 486, to_tag="srv"), 2.0) == []
    assert tx.on_transport_error(2.0) == [TransportError()]  # stays to absorb INVITEs
    assert state(tx) is State.ACCEPTED
    assert run_timers(tx, 100.0) == [(33.0, [Terminated()])]


@pytest.mark.parametrize("final", [None, 486])
def test_server_invite_transport_error_terminates(final: int | None) -> None:
    invite, tx = server_invite()
    if final is not None:
        tx.send_response(make_response(invite, final, to_tag="srv"), 0.0)
    assert tx.on_transport_error(0.1) == [TransportError(), Terminated()]
    assert tx.terminated and tx.next_deadline() is None


# --- server non-INVITE (Figure 8) -------------------------------------------------------


def test_server_non_invite_full_path() -> None:
    options = request(OPTIONS)
    tx = ServerNonInviteTransaction(options, reliable=False)
    assert tx.start(0.0) == [Deliver(options)]
    assert state(tx) is State.TRYING
    assert tx.on_request(request(OPTIONS), 0.5) == []  # Trying absorbs silently
    trying = make_response(options, 100)
    assert tx.send_response(trying, 0.6) == [Send(trying)]
    assert state(tx) is State.PROCEEDING
    assert tx.on_request(request(OPTIONS), 1.0) == [Send(trying, retransmit=True)]
    trying2 = make_response(options, 100)
    assert tx.send_response(trying2, 1.1) == [Send(trying2)]
    ok = make_response(options, 200, to_tag="srv")
    assert tx.send_response(ok, 2.0) == [Send(ok)]
    assert state(tx) is State.COMPLETED
    assert tx.pending_timers() == {"J": 34.0}
    assert tx.on_request(request(OPTIONS), 3.0) == [Send(ok, retransmit=True)]
    assert tx.send_response(make_response(options, 500), 3.0) == []  # discarded
    assert run_timers(tx, 100.0) == [(34.0, [Terminated()])]
    assert tx.on_request(request(OPTIONS), 101.0) == []


def test_server_non_invite_trying_to_completed_reliable() -> None:
    options = request(OPTIONS)
    tx = ServerNonInviteTransaction(options, reliable=True)
    tx.start(0.0)
    nf = make_response(options, 404, to_tag="srv")
    assert tx.send_response(nf, 0.1) == [Send(nf), Terminated()]


def test_server_non_invite_transport_error() -> None:
    options = request(OPTIONS)
    tx = ServerNonInviteTransaction(options, reliable=False)
    tx.start(0.0)
    tx.send_response(make_response(options, 200, to_tag="srv"), 0.0)
    assert tx.on_transport_error(0.0) == [TransportError(), Terminated()]


def test_factories_pick_the_machine() -> None:
    invite, options = request(INVITE), request(OPTIONS)
    assert isinstance(new_client_transaction(invite, reliable=False), ClientInviteTransaction)
    assert isinstance(new_client_transaction(options, reliable=False), ClientNonInviteTransaction)
    assert isinstance(new_server_transaction(invite, reliable=True), ServerInviteTransaction)
    assert isinstance(new_server_transaction(options, reliable=True), ServerNonInviteTransaction)
    assert is_reliable_transport("tls") and is_reliable_transport("WSS")
    assert not is_reliable_transport("UDP")


# --- matching keys ------------------------------------------------------------------------


def test_client_key_branch_and_method() -> None:
    invite = request(INVITE)
    assert client_key(response_to(invite, 180)) == client_key(invite)
    cancel = build_cancel(invite)
    assert client_key(cancel) != client_key(invite)
    assert client_key(response_to(cancel, 200)) == client_key(cancel)
    other = request(INVITE.replace("z9hG4bKprx1", "z9hG4bKprx2"))
    assert client_key(response_to(other, 180)) != client_key(invite)


def test_server_key_rfc3261() -> None:
    invite = request(INVITE)
    key = server_key(invite)
    assert key == server_key(request(INVITE))  # retransmission
    assert key == server_key(ack_for(invite, response_to(invite, 486)))  # non-2xx ACK
    cancel = request(build_cancel(invite).to_bytes().decode().replace("\r\n", "\n"))
    assert server_key(cancel) != key
    assert cancel_target_key(cancel) == key
    with pytest.raises(ValueError):
        cancel_target_key(invite)
    # Same branch from another sent-by is a different transaction (§17.2.3).
    spoof = request(INVITE.replace("proxy.spitguard.example:5060", "evil.example:5060"))
    assert server_key(spoof) != key
    # received/rport added by us do not matter.
    marked = request(INVITE.replace("z9hG4bKprx1", "z9hG4bKprx1;received=198.51.100.1"))
    assert server_key(marked) == key


@pytest.mark.parametrize("branch", ["", ";branch=390skdjuw", ";branch=z9hG4bK"])
def test_server_key_rfc2543_fallback(branch: str) -> None:
    invite = request(OLD_INVITE, branch=branch)
    key = server_key(invite)
    assert key[0] == "server-2543"
    assert key == server_key(request(OLD_INVITE, branch=branch))
    # The ACK carries our To tag and method ACK: still the INVITE's transaction.
    assert server_key(request(OLD_ACK, branch=branch)) == key
    for change in ("Call-ID: 999@10.0.0.9", "CSeq: 2 INVITE"):
        field = change.split(":")[0]
        line = next(x for x in OLD_INVITE.splitlines() if x.startswith(field + ":"))
        assert server_key(request(OLD_INVITE.replace(line, change), branch=branch)) != key
    moved = OLD_INVITE.replace("Via: SIP/2.0/UDP 10.0.0.9:5060", "Via: SIP/2.0/UDP 10.0.0.9:5070")
    assert server_key(request(moved, branch=branch)) != key
    other_from = OLD_INVITE.replace("tag=old1", "tag=old2")
    assert server_key(request(other_from, branch=branch)) != key
    other_uri = OLD_INVITE.replace("INVITE sip:bob@10.0.0.7", "INVITE sip:carol@10.0.0.7")
    assert server_key(request(other_uri, branch=branch)) != key


def test_rfc2543_end_to_end_ack_and_cancel() -> None:
    invite = request(OLD_INVITE, branch="")
    table = TransactionTable()
    tx = ServerInviteTransaction(invite, reliable=False)
    assert table.add(tx)
    tx.start(0.0)
    tx.send_response(make_response(invite, 486, to_tag="srv486"), 0.0)
    table.update(tx)
    ack = request(OLD_ACK, branch="")
    assert table.match_request(ack) is tx
    tx.on_request(ack, 0.5)
    assert state(tx) is State.CONFIRMED
    cancel_text = OLD_INVITE.replace("INVITE sip:", "CANCEL sip:").replace("1 INVITE", "1 CANCEL")
    cancel = request(cancel_text, branch="")
    assert table.match_cancel(cancel) is tx
    assert table.match_request(cancel) is None


def test_rfc2543_non_invite_key_includes_to_tag() -> None:
    bye = OLD_INVITE.replace("INVITE sip:", "BYE sip:").replace("1 INVITE", "2 BYE")
    bye = bye.replace("To: <sip:bob@10.0.0.7>", "To: <sip:bob@10.0.0.7>;tag=a")
    a = server_key(request(bye, branch=""))
    b = server_key(request(bye.replace("tag=a", "tag=b"), branch=""))
    assert a != b


# --- the table ----------------------------------------------------------------------------


def options_with_branch(n: int) -> Request:
    return request(OPTIONS.replace("z9hG4bKopt1", f"z9hG4bKopt{n}"))


def test_table_earliest_deadline_across_transactions() -> None:
    table = TransactionTable()
    assert table.next_deadline() is None
    a = ClientNonInviteTransaction(options_with_branch(1), reliable=False)
    b = ClientNonInviteTransaction(options_with_branch(2), reliable=True)
    a.start(0.0)
    b.start(0.2)
    assert table.add(a) and table.add(b)
    assert len(table) == 2 and a.key in table and table[b.key] is b
    assert table.next_deadline() == 0.5  # a's Timer E
    # a completes: its E/F entries are stale, K (0.3 + 5) is new.
    a.on_response(response_to(a.request, 200), 0.3)
    table.update(a)
    assert table.next_deadline() == 5.3
    # Nothing due yet: no events.
    assert table.on_timer(5.0) == []
    fired = table.on_timer(5.3)
    assert fired == [(a, [Terminated()])]
    assert a.key not in table and len(table) == 1
    assert table.next_deadline() == 32.2  # b's Timer F
    fired = table.on_timer(40.0)
    assert fired == [(b, [Timeout("F"), Terminated()])]
    assert len(table) == 0 and table.next_deadline() is None


def test_table_fires_all_due_in_one_call_and_skips_removed() -> None:
    table = TransactionTable()
    txs = []
    for n in range(5):
        tx = ClientNonInviteTransaction(options_with_branch(n), reliable=False)
        tx.start(float(n))
        table.add(tx)
        txs.append(tx)
    table.remove(txs[0].key)
    fired = table.on_timer(2.6)  # Timer E of txs 1 and 2 (at 1.5 and 2.5)
    assert [tx for tx, _ in fired] == [txs[1], txs[2]]
    assert all(ev == [Send(tx.request, retransmit=True)] for tx, ev in fired)
    assert table.next_deadline() == 3.5  # txs[1]'s second E and txs[3]'s first E


def test_table_bound_refuses_and_counts() -> None:
    table = TransactionTable(max_server=2, max_client=1)
    servers = [ServerNonInviteTransaction(options_with_branch(n), reliable=False) for n in range(3)]
    assert table.add(servers[0]) and table.add(servers[1])
    assert table.server_full()
    assert not table.add(servers[2])
    assert table.refused_server == 1 and servers[2].key not in table
    # The client share is separate: the proxy can still finish what it accepted.
    client = ClientInviteTransaction(request(INVITE), reliable=False)
    assert table.add(client)
    assert not table.add(ClientNonInviteTransaction(options_with_branch(9), reliable=False))
    assert table.refused_client == 1
    assert (table.server_count, table.client_count) == (2, 1)
    # A terminated transaction frees its slot.
    servers[0].start(0.0)
    servers[0].send_response(make_response(servers[0].request, 200, to_tag="t"), 0.0)
    servers[0].on_transport_error(0.0)
    table.update(servers[0])
    assert table.add(servers[2])
    with pytest.raises(ValueError):
        table.add(servers[2])


def test_table_heap_stays_bounded_under_churn() -> None:
    table = TransactionTable()
    tx = ClientNonInviteTransaction(request(OPTIONS), reliable=False)
    tx.start(0.0)
    table.add(tx)
    now = 0.0
    for _ in range(1000):
        now = tx.next_deadline() or now
        if now >= 31.0:
            break
        table.on_timer(now)
    for n in range(100, 600):
        other = ClientNonInviteTransaction(options_with_branch(n), reliable=False)
        other.start(0.0)
        table.add(other)
        other.on_response(response_to(other.request, 100, tag=None), 0.1)
        table.update(other)
        table.remove(other.key)
    assert len(table._heap) <= 2 * len(table) + 65
    assert table.next_deadline() == tx.next_deadline()


def test_table_match_helpers() -> None:
    table = TransactionTable()
    invite = request(INVITE)
    server = ServerInviteTransaction(invite, reliable=False)
    table.add(server)
    client = ClientInviteTransaction(invite, reliable=False)
    table.add(client)
    assert table.match_request(request(INVITE)) is server
    assert table.match_response(response_to(invite, 180)) is client
    assert table.get(("nope",)) is None
    assert set(table) == {server.key, client.key}


# --- CANCEL ---------------------------------------------------------------------------------


def test_build_cancel_fields() -> None:
    invite = request(INVITE)
    cancel = parse(build_cancel(invite).to_bytes())
    assert isinstance(cancel, Request)
    assert cancel.method == "CANCEL"
    assert cancel.uri == invite.uri
    assert cancel.call_id == invite.call_id
    assert cancel.get("to") == invite.get("to") and cancel.to.tag is None
    assert cancel.get("from") == invite.get("from")
    assert (cancel.cseq.number, cancel.cseq.method) == (314159, "CANCEL")
    assert cancel.get_all("via") == [invite.get_all("via")[0]]
    assert cancel.get_all("route") == invite.get_all("route")
    assert cancel.max_forwards == 70
    assert cancel.body == b"" and cancel.get("content-length") == "0"
    assert cancel.defects == ()
    with pytest.raises(ValueError):
        build_cancel(request(OPTIONS))


def test_build_cancel_splits_a_joined_via_line() -> None:
    joined = INVITE.replace("z9hG4bKprx1\nVia: SIP/2.0/UDP pc33", "z9hG4bKprx1, SIP/2.0/UDP pc33")
    invite = request(joined)
    assert len(invite.get_all("via")) == 1 and len(invite.vias) == 2
    cancel = parse(build_cancel(invite).to_bytes())
    assert cancel.vias == [invite.via]
