"""The SIP probe of one target over one transport, sans-I/O: bytes and times in, bytes out.

What it sends, in order:

1. ``OPTIONS`` (what svmap sends to find SIP devices).
2. Unless disabled, an ``INVITE`` shaped like a scanner's: a numeric user (``100``) in
   Request-URI, From and To, To equal to From, the target's IP literal as the host, and an
   SDP offer (``a=inactive``: no media ever flows).
3. ``CANCEL`` as soon as the INVITE gets any provisional response (RFC 3261 §9.1 allows
   it no earlier), so a phone that rings does so for a moment at most; ``ACK`` for a final
   error response (§17.1.1.3); on a 200, ``ACK`` and ``BYE`` at once, so an answered ghost
   call ends immediately.

Over UDP a request is retransmitted T1, 2*T1, 4*T1 ... apart (RFC 3261 §17.1.1.2, capped
at T2) at most `Timing.retries` times; the probe gives up `Timing.timeout` seconds after
the last transmission. Over TCP nothing is retransmitted. Everything is sent only to the
address the adapter connected to: a Contact or Record-Route pointing elsewhere is never
followed.

The adapter calls `start`, then `receive` for every datagram or framed TCP message, and
`on_timer` once `next_deadline()` has passed, sending whatever they return, until `done`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from ..sip.errors import SipParseError
from ..sip.message import Request, Response, parse
from ..sip.transaction import build_ack, build_cancel
from ..sip.uri import SipUri, parse_uri
from .results import SeenResponse, SipVerdict, TransportResult
from .targets import uri_host

__all__ = ["DEFAULT_USER", "Outgoing", "SipProbe", "Timing", "Transport"]

Transport: TypeAlias = Literal["udp", "tcp"]
DEFAULT_USER: Final = "100"  # what svwar and sippts dial first
RINGING: Final = frozenset({180, 181, 182, 183})
_MAX_AGENT: Final = 120
_MAX_RESPONSES: Final = 32  # a target flooding us with responses is cut off here


@dataclass(frozen=True, slots=True)
class Timing:
    """Retransmission and waiting, in seconds. Defaults: RFC 3261 T1/T2, two retries."""

    t1: float = 0.5
    t2: float = 4.0
    retries: int = 2  # UDP retransmissions of each request
    timeout: float = 2.0  # wait after the last transmission

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.timeout > 0):
            raise ValueError("timing needs t1 > 0, t2 >= t1 and timeout > 0")
        if not 0 <= self.retries <= 10:
            raise ValueError("retries must be between 0 and 10")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Bytes to send to the target. `urgent`: a CANCEL, ACK or BYE that ends what the
    target started; the adapter sends it at once (it still counts towards the rate)."""

    data: bytes
    method: str
    urgent: bool = False


@dataclass(slots=True)
class _Pending:
    request: Request
    data: bytes
    interval: float
    next_send: float | None  # None: no more retransmissions
    retries_left: int
    give_up_at: float | None  # set once retransmissions are over


class SipProbe:
    """One target, one transport: OPTIONS, then the scanner-shaped INVITE."""

    def __init__(
        self,
        *,
        transport: Transport,
        target_host: str,
        target_port: int,
        local_host: str,
        local_port: int,
        invite: bool = True,
        timing: Timing | None = None,
        user: str = DEFAULT_USER,
        user_agent: str = "spitguard-audit",
        token: Callable[[int], str] = secrets.token_hex,
    ) -> None:
        self.transport: Transport = transport
        self.timing = timing or Timing()
        self._reliable = transport == "tcp"
        self._target = uri_host(target_host)
        self._target_port = target_port
        self._local = f"{uri_host(local_host)}:{local_port}"
        self._local_host = local_host
        self._invite_enabled = invite
        self._user = user
        self._user_agent = user_agent
        self._token = token
        self._pending: dict[tuple[str, str], _Pending] = {}  # (branch, method) -> request
        self._responses: list[SeenResponse] = []
        self._trace: list[str] = []
        self._invite: Request | None = None
        self._invite_final: Response | None = None
        self._acks: dict[str, bytes] = {}  # To tag -> the ACK for that 2xx / error final
        self._rang = False
        self._cancelled = False
        self._bye_sent = False
        self._phase: Literal["new", "options", "invite", "done"] = "new"
        self._note: str | None = None

    # --- what the adapter reads --------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._phase == "done"

    def next_deadline(self) -> float | None:
        times = [
            t for p in self._pending.values() for t in (p.next_send, p.give_up_at) if t is not None
        ]
        return min(times) if times else None

    def result(self) -> TransportResult:
        verdict: SipVerdict = "rings" if self._rang else "answers" if self._responses else "silent"
        return TransportResult(
            self.transport, verdict, tuple(self._responses), tuple(self._trace), self._note
        )

    # --- input -------------------------------------------------------------------------
    def start(self, now: float) -> list[Outgoing]:
        if self._phase != "new":
            raise RuntimeError("probe already started")
        self._phase = "options"
        return [self._send_new(self._options(), now)]

    def receive(self, data: bytes, now: float) -> list[Outgoing]:
        """One datagram, or one message framed off the TCP stream."""
        if self.done:
            return []
        try:
            msg = parse(data)
            if not isinstance(msg, Response):
                return []  # requests from the target (its own OPTIONS, NOTIFY): ignored
            key = (msg.transaction_branch or "", msg.cseq.method)
        except SipParseError:
            return []
        if key[1] == "INVITE" and self._invite is not None and key[0] == self._invite.via.branch:
            return self._on_invite_response(msg, now)
        pending = self._pending.get(key)
        if pending is None:
            return []
        self._note_response(msg)
        if msg.status < 200:
            pending.next_send, pending.give_up_at = None, now + self.timing.timeout
            return []
        del self._pending[key]
        if key[1] == "OPTIONS":
            return self._after_options(now)
        return self._maybe_done()

    def on_timer(self, now: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        expired: list[tuple[str, str]] = []
        for key, p in self._pending.items():
            if p.next_send is not None and now >= p.next_send:
                out.append(Outgoing(p.data, p.request.method, urgent=p.request.method != "INVITE"))
                self._trace.append(f"> {p.request.method} (retransmission)")
                if p.retries_left > 0:
                    p.retries_left -= 1
                    p.interval = min(p.interval * 2, self.timing.t2)
                if p.retries_left > 0:
                    p.next_send = now + p.interval
                else:
                    p.next_send, p.give_up_at = None, now + self.timing.timeout
            elif p.give_up_at is not None and now >= p.give_up_at:
                expired.append(key)
        for key in expired:
            del self._pending[key]
            self._trace.append(f"- no answer to {key[1]}")
            if key[1] == "OPTIONS":
                out.extend(self._after_options(now))
        out.extend(self._maybe_done())
        return out

    def closed(self, reason: str) -> None:
        """The connection ended (TCP): nothing more can arrive."""
        if not self.done:
            self._note = self._note or reason
            self._pending.clear()
            self._phase = "done"

    # --- steps -------------------------------------------------------------------------
    def _after_options(self, now: float) -> list[Outgoing]:
        if not self._invite_enabled:
            return self._maybe_done()
        self._phase = "invite"
        invite = self._invite = self._scanner_invite()
        return [self._send_new(invite, now)]

    def _on_invite_response(self, msg: Response, now: float) -> list[Outgoing]:
        invite = self._invite
        assert invite is not None
        key = (invite.via.branch or "", "INVITE")
        status = msg.status
        if len(self._responses) < _MAX_RESPONSES:
            self._note_response(msg)
        if status in RINGING or 200 <= status < 300:
            self._rang = True
        out: list[Outgoing] = []
        if status < 200:
            pending = self._pending.get(key)
            if pending is not None:  # Proceeding: no more INVITE retransmissions
                pending.next_send, pending.give_up_at = None, now + self.timing.timeout
            if not self._cancelled and self._invite_final is None:
                self._cancelled = True
                out.append(self._send_new(build_cancel(invite), now, urgent=True))
            return out
        self._pending.pop(key, None)
        self._pending.pop((key[0], "CANCEL"), None)  # the final makes the CANCEL moot
        self._invite_final = self._invite_final or msg
        tag = msg.to.tag or ""
        if tag in self._acks:  # a retransmitted final: our ACK was lost, send it again
            self._trace.append("> ACK (again)")
            return [Outgoing(self._acks[tag], "ACK", urgent=True)]
        if status >= 300:
            ack = build_ack(invite, msg)
        else:
            ack = self._in_dialog("ACK", invite, msg, invite.cseq.number)
        data = ack.to_bytes()
        self._acks[tag] = data
        self._trace.append("> ACK")
        out.append(Outgoing(data, "ACK", urgent=True))
        if 200 <= status < 300 and not self._bye_sent:
            self._bye_sent = True
            bye = self._in_dialog("BYE", invite, msg, invite.cseq.number + 1)
            out.append(self._send_new(bye, now, urgent=True))
        out.extend(self._maybe_done())
        return out

    def _maybe_done(self) -> list[Outgoing]:
        # OPTIONS answered (or given up) moves on to "invite" unless INVITEs are off.
        waiting_invite = self._phase == "options" and self._invite_enabled
        if not self._pending and not waiting_invite and self._phase != "new":
            self._phase = "done"
        return []

    def _send_new(self, request: Request, now: float, *, urgent: bool = False) -> Outgoing:
        data = request.to_bytes()
        retries = 0 if self._reliable else self.timing.retries
        t1 = self.timing.t1
        pending = _Pending(
            request=request,
            data=data,
            interval=t1,
            next_send=now + t1 if retries else None,
            retries_left=retries,
            give_up_at=None if retries else now + self.timing.timeout,
        )
        self._pending[(request.via.branch or "", request.method)] = pending
        self._trace.append(f"> {request.method}")
        return Outgoing(data, request.method, urgent=urgent)

    def _note_response(self, msg: Response) -> None:
        agent = msg.server or msg.user_agent
        if agent is not None:
            agent = agent[:_MAX_AGENT]
        self._responses.append(SeenResponse(msg.cseq.method, msg.status, msg.reason[:60], agent))
        self._trace.append(f"< {msg.status} {msg.reason[:60]} ({msg.cseq.method})")

    # --- messages ----------------------------------------------------------------------
    def _via(self) -> str:
        return (
            f"SIP/2.0/{self.transport.upper()} {self._local};branch=z9hG4bK{self._token(8)};rport"
        )

    def _ruri(self) -> str:
        port = "" if self._target_port == 5060 else f":{self._target_port}"
        return f"sip:{self._user}@{self._target}{port}"

    def _contact(self) -> str:
        suffix = ";transport=tcp" if self._reliable else ""
        return f"<sip:{self._user}@{self._local}{suffix}>"

    def _common(self, method: str, from_tag: str) -> list[tuple[str, str]]:
        aor = f'"{self._user}" <sip:{self._user}@{self._target}>'
        return [
            ("Via", self._via()),
            ("Max-Forwards", "70"),
            ("From", f"{aor};tag={from_tag}"),
            ("To", aor),  # To equal to From: svmap's and svwar's shape
            ("Call-ID", self._token(12)),
            ("CSeq", f"1 {method}"),
            ("Contact", self._contact()),
            ("User-Agent", self._user_agent),
        ]

    def _options(self) -> Request:
        fields = [*self._common("OPTIONS", self._token(5)), ("Accept", "application/sdp")]
        return Request("OPTIONS", parse_uri(self._ruri()), fields)

    def _scanner_invite(self) -> Request:
        family = "IP6" if ":" in self._local_host else "IP4"
        session = int(self._token(4), 16)
        sdp = (
            "v=0\r\n"
            f"o=- {session} {session} IN {family} {self._local_host}\r\n"
            "s=-\r\n"
            f"c=IN {family} {self._local_host}\r\n"
            "t=0 0\r\n"
            "m=audio 9 RTP/AVP 0 8 101\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
            "a=inactive\r\n"
        ).encode("ascii")
        fields = [*self._common("INVITE", self._token(5)), ("Content-Type", "application/sdp")]
        return Request("INVITE", parse_uri(self._ruri()), fields, sdp)

    def _in_dialog(self, method: str, invite: Request, final: Response, cseq: int) -> Request:
        # The remote target from the Contact when it is a SIP URI; the packet still goes
        # only to the probed address (the adapter knows no other).
        uri = invite.uri
        contacts = final.contacts if final.has("contact") else []
        if isinstance(contacts, list) and contacts and isinstance(contacts[0].uri, SipUri):
            uri = contacts[0].uri
        fields = [
            ("Via", self._via()),
            ("Max-Forwards", "70"),
            ("From", invite.get("from") or ""),
            ("To", final.get("to") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("User-Agent", self._user_agent),
        ]
        return Request(method, uri, fields)
