"""What `make run` shows within a minute: reference phones that boot from the boot server
and register through the edge (one of them deliberately not behind NAT, so the portal
flags it), a trunk that calls them, and a small scanner simulation whose blocked traffic
fills the portal's events, traces and bans.

Everything stays on loopback: phones 127.0.1.x, the trunk 127.0.2.1, scanners
127.0.66.x (Linux routes all of 127/8 to `lo`). The demo never touches another address.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .demo import DEMO_DOMAIN, DEMO_TENANT
from .phone import ReferencePhone
from .sip.errors import SipParseError
from .sip.message import Response, parse
from .store.db import Store
from .store.errors import StoreError

log = logging.getLogger(__name__)

TRUNK_IP = "127.0.2.1"
POLYCOM_UA = "FileTransport PolycomVVX-VVX_450-UA/6.4.3.5018 Type/Application"
CALL_EVERY = 60.0  # seconds between rounds of trunk calls
SCAN_EVERY = 4.0  # seconds between scanner packets
SCANNERS = 40  # distinct scanner addresses, 127.0.66.10 upwards


@dataclass(frozen=True, slots=True)
class DemoPhone:
    mac: str
    user: str
    ip: str
    lan: str | None  # the LAN address it believes it has; None: a public address, no NAT
    label: str

    @property
    def where(self) -> str:
        return f"behind NAT ({self.lan})" if self.lan else "no NAT: flagged as exposed"


DEMO_PHONES = (
    DemoPhone("0004f2de0001", "1001", "127.0.1.1", "192.168.1.101", "Reception"),
    DemoPhone("0004f2de0002", "1002", "127.0.1.2", None, "Lab desk, public address"),
    DemoPhone("0004f2de0003", "1003", "127.0.1.3", "192.168.1.103", "Sales"),
)


async def ensure_demo_devices(store: Store) -> None:
    """The demo phones in the inventory (idempotent; after `ensure_demo`)."""
    for p in DEMO_PHONES:
        if await store.devices.get(p.mac) is None:
            await store.devices.add(
                p.mac,
                tenant=DEMO_TENANT,
                model="VVX_450",
                label=p.label,
                lines=[(1, f"{p.user}@{DEMO_DOMAIN}")],
            )


class DemoWorld:
    """Starts the phones, the trunk and the scanners; `stop()` ends them all."""

    def __init__(self, store: Store, *, sip: tuple[str, int], web_base: str) -> None:
        self.store = store
        self.sip = sip
        self.web_base = web_base
        self.phones: list[ReferencePhone] = []
        self.calls = 0
        self.answered = 0
        self.scans = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._guarded("phones", self._run_phones)),
            loop.create_task(self._guarded("scanners", self._run_scanners)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for phone in self.phones:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(phone.stop(unregister=False), 2.0)

    async def _guarded(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        # The demo is a show, not the product: a failure is logged and the edge keeps going.
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("demo %s stopped", what)

    async def _run_phones(self) -> None:
        for p in DEMO_PHONES:
            secrets_ = await self.store.devices.credentials(p.mac)
            if secrets_ is None:
                raise StoreError(f"demo device {p.mac} is missing")
            phone = ReferencePhone(
                p.mac,
                ip=p.ip,
                lan_address=p.lan,
                provisioning_url=f"{self.web_base}/provision/",
                prov_user=p.mac,
                prov_password=secrets_.provisioning_password,
                user_agent=POLYCOM_UA,
            )
            self.phones.append(phone)
            await phone.boot()
            log.info("demo phone %s (line %s) booted: %s", p.mac, p.user, p.where)
        for phone in self.phones:
            await phone.wait_registered(timeout=15)
        while True:
            for p in DEMO_PHONES:
                self.calls += 1
                outcome = await place_call(self.sip, f"{p.user}@{DEMO_DOMAIN}", hold=2.0)
                if outcome == "answered":
                    self.answered += 1
                log.info("demo trunk call to %s: %s", p.user, outcome)
            await asyncio.sleep(CALL_EVERY)

    async def _run_scanners(self) -> None:
        loop = asyncio.get_running_loop()
        kinds = itertools.cycle((scanner_options, scanner_invite, scanner_register))
        for n in itertools.count():
            source = f"127.0.66.{10 + n % SCANNERS}"
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(source, 0)
            )
            try:
                port = transport.get_extra_info("sockname")[1]
                transport.sendto(next(kinds)(source, port, self.sip[0], n), self.sip)
                self.scans += 1
            finally:
                transport.close()
            await asyncio.sleep(SCAN_EVERY)


# --- the trunk: a minimal UAC (INVITE, ACK, BYE) ---------------------------------------------


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Response] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(SipParseError):
            msg = parse(data)
            if isinstance(msg, Response):
                self.queue.put_nowait(msg)


async def place_call(edge: tuple[str, int], aor: str, *, hold: float) -> str:
    """Call `aor` through the edge from the trunk address: "answered" (and hung up after
    `hold` seconds), or the final status code, or "no answer"."""
    loop = asyncio.get_running_loop()
    transport, inbox = await loop.create_datagram_endpoint(_Inbox, local_addr=(TRUNK_IP, 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        call = _Call(aor, f"{TRUNK_IP}:{port}", edge)
        final = await _transact(transport, inbox, call.invite(), "INVITE", 1, edge)
        if final is None:
            return "no answer"
        if final.status >= 300:
            transport.sendto(call.ack_non_2xx(final), edge)
            return str(final.status)
        transport.sendto(call.ack_2xx(final), edge)
        await asyncio.sleep(hold)
        await _transact(transport, inbox, call.bye(), "BYE", 2, edge)
        return "answered"
    finally:
        transport.close()


async def _transact(
    transport: asyncio.DatagramTransport,
    inbox: _Inbox,
    data: bytes,
    method: str,
    cseq: int,
    edge: tuple[str, int],
) -> Response | None:
    """Send and retransmit (RFC 3261 Timer A/E doubling from 0.5 s) until a final answer."""
    interval, waited, provisional = 0.5, 0.0, False
    transport.sendto(data, edge)
    while waited < 32.0:
        try:
            resp = await asyncio.wait_for(inbox.queue.get(), interval)
        except TimeoutError:
            waited += interval
            if not provisional:  # after a provisional, an INVITE waits for the callee
                transport.sendto(data, edge)
                interval = min(interval * 2, 4.0)
            continue
        if resp.cseq.method != method or resp.cseq.number != cseq:
            continue
        if resp.status >= 200:
            return resp
        provisional = True
    return None


class _Call:
    def __init__(self, aor: str, local: str, edge: tuple[str, int]) -> None:
        self.aor = aor
        self.local = local
        self.call_id = f"{secrets.token_hex(8)}@{TRUNK_IP}"
        self.tag = secrets.token_hex(4)
        self.branch = "z9hG4bK" + secrets.token_hex(8)
        self.to_header = f"<sip:{aor}>"
        self.route: list[str] = []
        self.remote_target = f"sip:{aor}"

    def _request(self, method: str, uri: str, cseq: int, branch: str, *extra: str) -> bytes:
        body = b""
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.local};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:+15550100@{TRUNK_IP}>;tag={self.tag}",
            f"To: {self.to_header}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            *extra,
        ]
        if method == "INVITE":
            body = (
                b"v=0\r\no=trunk 1 1 IN IP4 127.0.2.1\r\ns=demo\r\nc=IN IP4 127.0.2.1\r\n"
                b"t=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            )
            lines += [f"Contact: <sip:trunk@{self.local}>", "Content-Type: application/sdp"]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def invite(self) -> bytes:
        return self._request("INVITE", f"sip:{self.aor}", 1, self.branch)

    def ack_non_2xx(self, final: Response) -> bytes:
        # Hop-by-hop: same branch and Request-URI as the INVITE, To with the answer's tag.
        self.to_header = final.get("to") or self.to_header
        return self._request("ACK", f"sip:{self.aor}", 1, self.branch)

    def _dialog(self, final: Response) -> None:
        self.to_header = final.get("to") or self.to_header
        self.route = [str(r) for r in reversed(final.record_routes)]
        contacts = final.contacts
        if isinstance(contacts, list) and contacts:
            self.remote_target = str(contacts[0].uri)

    def ack_2xx(self, final: Response) -> bytes:
        self._dialog(final)
        routes = [f"Route: {r}" for r in self.route]
        branch = "z9hG4bK" + secrets.token_hex(8)
        return self._request("ACK", self.remote_target, 1, branch, *routes)

    def bye(self) -> bytes:
        routes = [f"Route: {r}" for r in self.route]
        branch = "z9hG4bK" + secrets.token_hex(8)
        return self._request("BYE", self.remote_target, 2, branch, *routes)


# --- the scanners: packets shaped like the public tools' ------------------------------------


def _digits(n: int) -> str:
    return str(1_000_000_000 + n * 7919)


def scanner_options(source: str, port: int, edge_host: str, n: int) -> bytes:
    """Like SIPVicious svmap: OPTIONS, friendly-scanner, To = From on a placeholder host."""
    return (
        f"OPTIONS sip:100@{edge_host} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source}:{port};branch=z9hG4bK-{_digits(n)};rport\r\n"
        "Max-Forwards: 70\r\n"
        'To: "sipvicious"<sip:100@1.1.1.1>\r\n'
        f'From: "sipvicious"<sip:100@1.1.1.1>;tag=6334{_digits(n)}\r\n'
        "User-Agent: friendly-scanner\r\n"
        f"Call-ID: {_digits(n)}\r\n"
        f"Contact: <sip:100@{source}:{port}>\r\n"
        "CSeq: 1 OPTIONS\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def scanner_invite(source: str, port: int, edge_host: str, n: int) -> bytes:
    """A ghost call: numeric user, To equal to From, IP-literal Request-URI."""
    user = str(100 + n % 900)
    return (
        f"INVITE sip:{user}@{edge_host} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"To: <sip:{user}@{edge_host}>\r\n"
        f"From: <sip:{user}@{edge_host}>;tag={secrets.token_hex(4)}\r\n"
        "User-Agent: sipcli/v1.8\r\n"
        f"Call-ID: {secrets.token_hex(10)}\r\n"
        f"Contact: <sip:{user}@{source}:{port}>\r\n"
        "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def scanner_register(source: str, port: int, edge_host: str, n: int) -> bytes:
    """Like SIPVicious svwar: REGISTER probing one extension after another."""
    user = str(1000 + n % 9000)
    return (
        f"REGISTER sip:{edge_host} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source}:{port};branch=z9hG4bK-{_digits(n)};rport\r\n"
        "Max-Forwards: 70\r\n"
        f'To: "{user}"<sip:{user}@{edge_host}>\r\n'
        f'From: "{user}"<sip:{user}@{edge_host}>;tag=6334{_digits(n)}\r\n'
        "User-Agent: friendly-scanner\r\n"
        f"Call-ID: {_digits(n)}\r\n"
        f"Contact: <sip:{user}@{source}:{port}>\r\n"
        "CSeq: 1 REGISTER\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


__all__ = [
    "DEMO_PHONES",
    "TRUNK_IP",
    "DemoPhone",
    "DemoWorld",
    "ensure_demo_devices",
    "place_call",
    "scanner_invite",
    "scanner_options",
    "scanner_register",
]
