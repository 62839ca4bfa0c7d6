"""Drive `spitguard.guard.core.Guard` directly: a guard wired with plain callables, and
builders for the SIP requests a phone, a trunk or a scanner would send.

The guard's collaborators are replaced by what they answer, not by mocks: `trusted` is a
dict lookup, `registered_flow` / `registered_host` read sets the test controls (what the
location service would hold), `local_domain` knows one domain. Time is always passed in.

Roles take loopback addresses: edge 127.0.0.1:5060, phones 127.0.1.x, upstream trunk
127.0.2.1, scanners 127.0.66.x.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from spitguard.guard.bans import Ban, BanList
from spitguard.guard.core import Guard, GuardPolicy, Verdict
from spitguard.guard.enumeration import EnumerationDetector
from spitguard.guard.events import EventAggregator
from spitguard.guard.fingerprints import Fingerprints
from spitguard.guard.ratelimit import RateLimiter
from spitguard.sip import parse
from spitguard.transport.flow import Flow

EDGE_HOST = "127.0.0.1"
EDGE_PORT = 5060
UPSTREAM_HOST = "127.0.2.1"
DOMAIN = "acme.test"
T0 = 1_700_000_040.0  # the first second of an epoch minute (events aggregate per minute)
PHONE_UA = "Yealink SIP-T46S 66.86.0.15"
FINGERPRINTS = Fingerprints.load()
TRUSTED = {UPSTREAM_HOST: "upstream"}


# --- flows ----------------------------------------------------------------------------
def flow(host: str, port: int = 5060, transport: str = "udp") -> Flow:
    return Flow(transport, EDGE_HOST, EDGE_PORT, host, port)


def phone(n: int, port: int = 5060) -> Flow:
    """The flow from phone 127.0.1.<n> (a port other than 5060 = another device behind
    the same NAT address)."""
    return flow(f"127.0.1.{n}", port)


def scanner(n: int = 1, port: int = 5060, transport: str = "udp") -> Flow:
    return flow(f"127.0.66.{n}", port, transport)


def upstream(port: int = 5060) -> Flow:
    return flow(UPSTREAM_HOST, port)


# --- the guard --------------------------------------------------------------------------
@dataclass
class Harness:
    """A guard plus the live state it consults, which the test changes at will."""

    guard: Guard
    registered_flows: set[Flow] = field(default_factory=set)
    registered_hosts: set[str] = field(default_factory=set)
    banned: list[Ban] = field(default_factory=list)  # everything reported through on_ban

    def send(self, raw: bytes, via: Flow, now: float) -> Verdict:
        return self.guard.decide(parse(raw), via, raw, now)

    def register(self, via: Flow) -> None:
        """What a successful registration leaves in the location service."""
        self.registered_flows.add(via)
        self.registered_hosts.add(via.remote_host)

    def is_banned(self, host: str, now: float) -> bool:
        return self.guard.bans.is_banned(host, now)


def make_guard(
    *,
    policy: GuardPolicy | None = None,
    rates: RateLimiter | None = None,
    bans: BanList | None = None,
    enumeration: EnumerationDetector | None = None,
    events: EventAggregator | None = None,
    trusted: dict[str, str] | None = None,
) -> Harness:
    groups = dict(TRUSTED if trusted is None else trusted)
    flows: set[Flow] = set()
    hosts: set[str] = set()
    banned: list[Ban] = []
    guard = Guard(
        trusted=groups.get,
        registered_flow=lambda f: f in flows,
        registered_host=lambda h: h in hosts,
        local_domain=lambda h: h.lower() == DOMAIN,
        fingerprints=FINGERPRINTS,
        policy=policy,
        rates=rates,
        bans=bans,
        enumeration=enumeration,
        events=events,
        on_ban=banned.append,
    )
    return Harness(guard, flows, hosts, banned)


# --- messages ---------------------------------------------------------------------------
_serial = itertools.count(1)


def request(
    method: str,
    src: Flow,
    *,
    user: str = "1001",
    to_user: str | None = None,
    domain: str = DOMAIN,
    ruri: str | None = None,
    ua: str | None = PHONE_UA,
    headers: Iterable[str] = (),
    body: bytes = b"",
) -> bytes:
    """A well-formed request as a current desk phone at `src` sends it.

    REGISTER: R-URI `sip:<domain>`, To = From = `<user>@<domain>`. Anything else: R-URI and
    To are `<to_user>@<domain>`. Branch, tag and Call-ID are fresh on every call.
    """
    n = next(_serial)
    if method == "REGISTER":
        target = user if to_user is None else to_user
        uri = ruri or f"sip:{domain}"
    else:
        target = to_user or "1002"
        uri = ruri or f"sip:{target}@{domain}"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{src.transport.upper()} {src.remote_host}:{src.remote_port}"
        f";rport;branch=z9hG4bK{n:06d}ph{n % 97:02d}",
        f"From: <sip:{user}@{DOMAIN}>;tag=ph{n}t",
        f"To: <sip:{target}@{domain}>",
        f"Call-ID: ph{n}c@{src.remote_host}",
        f"CSeq: {n} {method}",
        f"Contact: <sip:{user}@{src.remote_host}:{src.remote_port}>",
        "Max-Forwards: 70",
    ]
    if ua is not None:
        lines.append(f"User-Agent: {ua}")
    if method == "REGISTER":
        lines.append("Expires: 3600")
    lines.extend(headers)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def response(status: int, src: Flow, *, method: str = "INVITE") -> bytes:
    """A response as a phone or trunk at `src` sends it back through the edge."""
    reason = {180: "Ringing", 200: "OK", 401: "Unauthorized"}.get(status, "Status")
    lines = [
        f"SIP/2.0 {status} {reason}",
        f"Via: SIP/2.0/UDP {EDGE_HOST}:{EDGE_PORT};branch=z9hG4bKedge0001",
        f"From: <sip:1001@{DOMAIN}>;tag=edge1",
        f"To: <sip:1002@{DOMAIN}>;tag=callee1",
        "Call-ID: edgecall1@acme.test",
        f"CSeq: 1 {method}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
