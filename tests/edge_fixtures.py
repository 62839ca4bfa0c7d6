"""A small builder for driving the sans-I/O edge (`spitguard.proxy.core.Proxy`) in tests.

`make_edge()` wires a `Proxy` the way `spitguard.app.Edge.start` does (directory,
authenticator, registrar, NAT classifier, flow tokens, to-tag secret) but with a fake
clock and a recording `Output`: the sans-I/O boundary, not a mock of a real component.
Everything the edge sends is kept as bytes and parsed with `spitguard.sip.parse`, so
tests assert on what would go on the wire.

Roles take loopback addresses: edge 127.0.0.1:5060, phones 127.0.1.x, upstream trunk
127.0.2.1:5060, scanners 127.0.66.x.
"""

from __future__ import annotations

import functools
import ipaddress
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from spitguard.proxy.auth import Authenticator
from spitguard.proxy.core import Proxy, ProxyConfig, response_tag
from spitguard.proxy.directory import Directory
from spitguard.proxy.location import Binding, Location
from spitguard.proxy.nat import NatClassifier
from spitguard.proxy.registrar import Registrar, RegistrarPolicy
from spitguard.sip import Request, Response, make_response, parse
from spitguard.sip.auth import format_credentials
from spitguard.sip.digest import DigestClient, select_challenge
from spitguard.transport.flow import Flow, FlowTokens, Target

EDGE_HOST = "127.0.0.1"
EDGE_PORT = 5060
UPSTREAM_HOST = "127.0.2.1"
UPSTREAM = Target("udp", UPSTREAM_HOST, 5060)
DOMAIN = "acme.test"
TENANT = 1
PASSWORDS = {"alice": "alice-pw-3141", "bob": "bob-pw-2718", "carol": "carol-pw-1618"}
WALL_T0 = 1_700_000_000.0
MONO_T0 = 5_000.0
TOKEN_KEY = b"flow-token-key-for-tests-0123456"
DIGEST_SECRET = b"digest-secret-for-tests-01234567"
TAG_SECRET = b"tag-secret-for-tests-0123456789a"
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.2.1\r\ns=-\r\nc=IN IP4 127.0.2.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\n"
)


# --- flows ----------------------------------------------------------------------------
def phone_flow(n: int, port: int = 5060, transport: str = "udp", conn_id: int = 0) -> Flow:
    """The flow from the edge to phone 127.0.1.<n>."""
    return Flow(transport, EDGE_HOST, EDGE_PORT, f"127.0.1.{n}", port, conn_id)


def upstream_flow(port: int = 5060) -> Flow:
    return Flow("udp", EDGE_HOST, EDGE_PORT, UPSTREAM_HOST, port)


def scanner_flow(n: int = 1, port: int = 5060) -> Flow:
    return Flow("udp", EDGE_HOST, EDGE_PORT, f"127.0.66.{n}", port)


# --- clock and output -----------------------------------------------------------------
class FakeClock:
    """Wall-clock and monotonic time, advanced together by hand."""

    def __init__(self, wall: float = WALL_T0, mono: float = MONO_T0) -> None:
        self.wall = wall
        self.mono = mono

    def wall_time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@dataclass(frozen=True)
class Sent:
    """One thing the edge sent: where to, and the exact bytes."""

    where: Flow | Target
    data: bytes

    @property
    def msg(self) -> Request | Response:
        return parse(self.data)

    @property
    def request(self) -> Request:
        msg = self.msg
        assert isinstance(msg, Request), f"expected a request, got {msg!r}"
        return msg

    @property
    def response(self) -> Response:
        msg = self.msg
        assert isinstance(msg, Response), f"expected a response, got {msg!r}"
        return msg

    @property
    def remote(self) -> tuple[str, int]:
        w = self.where
        return (w.remote_host, w.remote_port) if isinstance(w, Flow) else (w.host, w.port)

    @property
    def via_flow(self) -> bool:
        return isinstance(self.where, Flow)


class RecordingOutput:
    """The proxy's `Output`: records every send; flows in `dead` are not alive."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.dead: set[Flow] = set()

    def send(self, flow: Flow, data: bytes) -> bool:
        self.sent.append(Sent(flow, data))
        return flow not in self.dead

    def send_to(self, target: Target, data: bytes) -> bool:
        self.sent.append(Sent(target, data))
        return True

    def flow_for(self, target: Target) -> Flow | None:
        return None

    def is_alive(self, flow: Flow) -> bool:
        return flow not in self.dead

    def take(self) -> list[Sent]:
        out, self.sent = self.sent, []
        return out


# --- building SIP text ----------------------------------------------------------------
def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(5)


def new_call_id() -> str:
    return secrets.token_hex(10) + "@test"


def sip_request(
    method: str, uri: str, headers: Iterable[tuple[str, str]], body: bytes = b""
) -> bytes:
    """A request as real SIP text with CRLF line ends and a correct Content-Length."""
    lines = [f"{method} {uri} SIP/2.0"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def via(
    flow: Flow, branch: str, *, host: str | None = None, port: int | None = None, rport: bool = True
) -> str:
    """The top Via a peer on `flow` writes (its own address unless told otherwise)."""
    h = host if host is not None else flow.remote_host
    p = port if port is not None else flow.remote_port
    return f"SIP/2.0/{flow.transport.upper()} {h}:{p};branch={branch}" + (";rport" if rport else "")


def answer(
    req: Request,
    status: int,
    *,
    tag: str | None = None,
    contact: str | None = None,
    reason: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    """What a UAS sends back for `req`: Vias, From, To (+tag), Call-ID, CSeq copied, the
    Record-Route set copied for dialog-creating responses, an optional Contact."""
    fields: list[tuple[str, str]] = []
    if 100 < status < 300:
        fields.extend(("Record-Route", rr) for rr in req.get_all("record-route"))
    if contact is not None:
        fields.append(("Contact", contact))
    fields.extend(extra)
    resp = make_response(req, status, reason, to_tag=tag, fields=fields)
    return resp.to_bytes()


def cancel_for(invite: Request) -> bytes:
    """The CANCEL a UAC sends for its pending INVITE (RFC 3261 §9.1), as text."""
    headers = [("Via", invite.get_all("via")[0])]
    headers.extend(("Route", r) for r in invite.get_all("route"))
    headers += [
        ("Max-Forwards", "70"),
        ("From", invite.get("from") or ""),
        ("To", invite.get("to") or ""),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.number} CANCEL"),
    ]
    return sip_request("CANCEL", str(invite.uri), headers)


def ack_for_failure(invite: Request, resp: Response) -> bytes:
    """The ACK for a non-2xx final (RFC 3261 §17.1.1.3): same branch, To from the response."""
    headers = [("Via", invite.get_all("via")[0])]
    headers.extend(("Route", r) for r in invite.get_all("route"))
    headers += [
        ("Max-Forwards", "70"),
        ("From", invite.get("from") or ""),
        ("To", resp.get("to") or ""),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.number} ACK"),
    ]
    return sip_request("ACK", str(invite.uri), headers)


def in_dialog(
    flow: Flow,
    method: str,
    target: str,
    *,
    from_: str,
    to: str,
    call_id: str,
    cseq: int,
    routes: Sequence[str],
    branch: str | None = None,
    max_forwards: int = 70,
) -> bytes:
    """An in-dialog request (ACK for 2xx, BYE ...) with the dialog's Route set."""
    headers = [("Via", via(flow, branch or new_branch()))]
    headers.extend(("Route", r) for r in routes)
    headers += [
        ("Max-Forwards", str(max_forwards)),
        ("From", from_),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    return sip_request(method, target, headers)


def credentials(
    challenge_response: Response, user: str, password: str, *, method: str, uri: str
) -> tuple[str, str]:
    """Answer a 401/407 like a phone: the (Proxy-)Authorization header to add."""
    proxy = challenge_response.status == 407
    challenges = (
        challenge_response.proxy_authenticate if proxy else challenge_response.www_authenticate
    )
    chosen = select_challenge(challenges)
    assert chosen is not None, "no usable challenge"
    creds = DigestClient(user, password).authorize(chosen, method=method, uri=uri)
    return ("Proxy-Authorization" if proxy else "Authorization", format_credentials(creds))


@dataclass
class Outgoing:
    """A request a test peer sent and what the edge sent in reaction to it."""

    request: Request
    sent: list[Sent]

    def to(self, flow_or_target: Flow | Target) -> list[Sent]:
        return [s for s in self.sent if s.where == flow_or_target]

    def responses(self) -> list[Response]:
        return [s.response for s in self.sent if s.data.startswith(b"SIP/2.0")]

    def requests(self) -> list[Sent]:
        return [s for s in self.sent if not s.data.startswith(b"SIP/2.0")]


# --- the edge ---------------------------------------------------------------------------
@dataclass
class Edge:
    proxy: Proxy
    out: RecordingOutput
    clock: FakeClock
    directory: Directory
    location: Location
    auth: Authenticator
    tokens: FlowTokens
    config: ProxyConfig
    changes: list[tuple[list[Binding], list[Binding]]] = field(default_factory=list)
    auth_results: list[tuple[Flow, bool]] = field(default_factory=list)  # from `on_auth`

    # --- I/O ---------------------------------------------------------------------------
    def receive(self, flow: Flow, data: bytes) -> list[Sent]:
        """Feed bytes arriving on `flow`; return everything the edge sent in reaction."""
        self.out.take()
        self.proxy.receive(data, flow)
        return self.out.take()

    def reply(self, flow: Flow, data: bytes) -> Response:
        """Feed a request that the edge answers itself; return its one response."""
        sent = self.receive(flow, data)
        responses = [s for s in sent if s.data.startswith(b"SIP/2.0")]
        assert len(responses) == 1, f"expected one response, got {sent!r}"
        assert responses[0].where == flow, "the response must go back on the request's flow"
        return responses[0].response

    def advance(self, seconds: float) -> list[Sent]:
        """Move both clocks forward, firing every transaction timer due on the way."""
        self.out.take()
        end = self.clock.mono + seconds
        while True:
            deadline = self.proxy.next_deadline()
            if deadline is None or deadline > end:
                break
            step = max(0.0, deadline - self.clock.mono)
            self.clock.advance(step)
            self.proxy.on_timer()
        self.clock.advance(end - self.clock.mono)
        return self.out.take()

    def bindings(self, user: str, domain: str = DOMAIN) -> list[Binding]:
        return self.location.lookup(f"sip:{user}@{domain}", self.clock.wall)

    # --- REGISTER ------------------------------------------------------------------------
    def register_request(
        self,
        flow: Flow,
        user: str,
        *,
        contact: str | Sequence[str] | None = "",
        expires: int | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        call_id: str = "",
        cseq: int = 1,
        domain: str = DOMAIN,
        from_tag: str = "",
        via_host: str | None = None,
        via_port: int | None = None,
        authorization: tuple[str, str] | None = None,
    ) -> bytes:
        """A REGISTER as a phone writes it. `contact=""` means the phone's own address;
        None sends no Contact (a query)."""
        if contact == "":
            h = via_host or flow.remote_host
            p = via_port or flow.remote_port
            contacts: Sequence[str] = [f"<sip:{user}@{h}:{p}>"]
        elif contact is None:
            contacts = []
        elif isinstance(contact, str):
            contacts = [contact]
        else:
            contacts = contact
        headers = [
            ("Via", via(flow, new_branch(), host=via_host, port=via_port)),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{user}@{domain}>;tag={from_tag or user + '-tag'}"),
            ("To", f"<sip:{user}@{domain}>"),
            ("Call-ID", call_id or f"reg-{user}-{flow.remote_host}-{flow.remote_port}"),
            ("CSeq", f"{cseq} REGISTER"),
        ]
        headers.extend(("Contact", c) for c in contacts)
        if expires is not None:
            headers.append(("Expires", str(expires)))
        headers.append(("User-Agent", "TestPhone/1.0"))
        headers.extend(extra_headers)
        if authorization is not None:
            headers.append(authorization)
        return sip_request("REGISTER", f"sip:{domain}", headers)

    def register(
        self,
        flow: Flow,
        user: str,
        password: str,
        *,
        auth_user: str | None = None,
        contact: str | Sequence[str] | None = "",
        expires: int | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        call_id: str = "",
        cseq: int = 1,
        domain: str = DOMAIN,
        via_host: str | None = None,
        via_port: int | None = None,
        before_answer: Callable[[], None] | None = None,
    ) -> Response:
        """The phone's REGISTER dance: unauthenticated REGISTER (CSeq `cseq`) → 401 →
        REGISTER with Authorization (CSeq `cseq + 1`, same Call-ID). Returns the final
        response (or the first one when it is not a 401)."""

        def build(n: int, authz: tuple[str, str] | None) -> bytes:
            return self.register_request(
                flow,
                user,
                contact=contact,
                expires=expires,
                extra_headers=extra_headers,
                call_id=call_id,
                cseq=n,
                domain=domain,
                via_host=via_host,
                via_port=via_port,
                authorization=authz,
            )

        first = self.reply(flow, build(cseq, None))
        if first.status != 401:
            return first
        if before_answer is not None:
            before_answer()
        authz = credentials(
            first, auth_user or user, password, method="REGISTER", uri=f"sip:{domain}"
        )
        return self.reply(flow, build(cseq + 1, authz))

    # --- INVITE --------------------------------------------------------------------------
    def invite_request(
        self,
        flow: Flow,
        ruri: str,
        *,
        from_uri: str,
        to_uri: str | None = None,
        call_id: str = "",
        cseq: int = 1,
        from_tag: str = "caller-tag",
        branch: str | None = None,
        max_forwards: int = 70,
        contact: str | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        via_host: str | None = None,
        via_port: int | None = None,
    ) -> bytes:
        headers = [
            ("Via", via(flow, branch or new_branch(), host=via_host, port=via_port)),
            ("Max-Forwards", str(max_forwards)),
            ("From", f"<{from_uri}>;tag={from_tag}"),
            ("To", f"<{to_uri or ruri}>"),
            ("Call-ID", call_id or new_call_id()),
            ("CSeq", f"{cseq} INVITE"),
            ("Contact", contact or f"<sip:caller@{flow.remote_host}:{flow.remote_port}>"),
            ("Content-Type", "application/sdp"),
        ]
        headers.extend(extra_headers)
        return sip_request("INVITE", ruri, headers, SDP)

    def invite(
        self,
        flow: Flow,
        ruri: str,
        *,
        from_uri: str,
        to_uri: str | None = None,
        credentials_for: tuple[str, str] | None = None,
        call_id: str = "",
        cseq: int = 1,
        from_tag: str = "caller-tag",
        max_forwards: int = 70,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> Outgoing:
        """Send an INVITE. With `credentials_for=(user, password)` answer a 407 like a
        phone: ACK the 407, then INVITE again (CSeq + 1) with Proxy-Authorization."""
        call_id = call_id or new_call_id()

        def build(n: int, extra: Sequence[tuple[str, str]]) -> bytes:
            return self.invite_request(
                flow,
                ruri,
                from_uri=from_uri,
                to_uri=to_uri,
                call_id=call_id,
                cseq=n,
                from_tag=from_tag,
                max_forwards=max_forwards,
                extra_headers=extra,
            )

        data = build(cseq, extra_headers)
        sent = self.receive(flow, data)
        out = Outgoing(_as_request(data), sent)
        challenge = next((r for r in out.responses() if r.status == 407), None)
        if credentials_for is None or challenge is None:
            return out
        self.receive(flow, ack_for_failure(out.request, challenge))
        user, password = credentials_for
        authz = credentials(challenge, user, password, method="INVITE", uri=ruri)
        data = build(cseq + 1, [*extra_headers, authz])
        return Outgoing(_as_request(data), self.receive(flow, data))


def _as_request(data: bytes) -> Request:
    msg = parse(data)
    assert isinstance(msg, Request)
    return msg


def make_directory() -> Directory:
    directory = Directory()
    directory.replace(
        [(DOMAIN, TENANT)],
        [
            (TENANT, f"sip:{user}@{DOMAIN}", user, DOMAIN, password)
            for user, password in PASSWORDS.items()
        ],
        revision=1,
    )
    return directory


def make_edge(
    *,
    policy: RegistrarPolicy | None = None,
    nonce_ttl: float = 300.0,
    upstream: tuple[Target, ...] = (UPSTREAM,),
    trusted_networks: tuple[str, ...] = (f"{UPSTREAM_HOST}/32",),
    algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
) -> Edge:
    """An edge wired like `spitguard.app.Edge.start`, with a fake clock and recording I/O."""
    clock = FakeClock()
    out = RecordingOutput()
    directory = make_directory()
    location = Location()
    auth = Authenticator(directory, DIGEST_SECRET, nonce_ttl=nonce_ttl, algorithms=algorithms)
    tokens = FlowTokens(TOKEN_KEY)
    config = ProxyConfig(
        host=EDGE_HOST,
        ports={"udp": EDGE_PORT, "tcp": EDGE_PORT},
        upstream=upstream,
        local_hosts=(EDGE_HOST,),
        user_agent="spitguard-test",
    )
    networks = [ipaddress.ip_network(n) for n in trusted_networks]

    def trusted(host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in networks)

    registrar = Registrar(
        directory,
        location,
        auth,
        NatClassifier(),
        policy or RegistrarPolicy(),
        to_tag=functools.partial(response_tag, secret=TAG_SECRET),
    )
    changes: list[tuple[list[Binding], list[Binding]]] = []
    auth_results: list[tuple[Flow, bool]] = []
    proxy = Proxy(
        config,
        directory=directory,
        location=location,
        registrar=registrar,
        auth=auth,
        tokens=tokens,
        output=out,
        wall_clock=clock.wall_time,
        clock=clock.monotonic,
        on_bindings_changed=lambda added, removed: changes.append((added, removed)),
        on_auth=lambda flow, ok: auth_results.append((flow, ok)),
        trusted=trusted,
        tag_secret=TAG_SECRET,
    )
    return Edge(proxy, out, clock, directory, location, auth, tokens, config, changes, auth_results)
