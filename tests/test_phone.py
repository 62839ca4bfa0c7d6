"""The reference Polycom (`spitguard.phone`) checks rendered configurations by behaviour.

Through the real edge (`running_edge`), the phone boots from the real boot server under
/provision/, registers, takes a call from the upstream trunk (SIPp), refuses a scanner's
direct INVITE, and re-registers when the injected clock reaches the refresh time.
A small boot server in the test serves what `PolycomDriver` renders, or a hand-edited
file the driver refuses to render (validation Null); the phone boots from it, and then:
- refuses a scanner's direct INVITE with 400 under `source`, rings for it with
  validation Null (a hand-edited file: the driver cannot render Null), challenges it
  with 401 under `digest`;
- re-fetches its configuration on a check-sync NOTIFY that passes validation.

Roles: edge and boot server 127.0.0.1, phones 127.0.1.x, trunk 127.0.2.1, scanners
127.0.66.x. Every wait is a deadline on an event or a poll, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from edge_server import DOMAIN, USERS, running_edge
from peers import UPSTREAM_IP, free_port, phone_ip, require_tool, scanner_ip
from peers.sipp import Sipp
from spitguard.phone import (
    FACTORY_ADMIN_PASSWORD,
    ManualClock,
    ReferencePhone,
    sip_user_agent,
)
from spitguard.phone.config import apply, merge, parse_config, parse_master
from spitguard.provision.polycom import PolycomDriver
from spitguard.provision.profile import DeviceConfig, HardeningProfile, Line, ValidationMethod
from spitguard.sip.auth import format_credentials, parse_credentials
from spitguard.sip.digest import DigestClient, DigestResult, DigestServer, compute_ha1
from spitguard.sip.message import Request, Response, parse
from spitguard.sip.uri import parse_uri

T = TypeVar("T")

MAC = "0004f2a1b2c3"
ADMIN = "Adm1nPassw0rd"
PROV_USER = "polycom-" + MAC
PROV_PASSWORD = "prov-secret-77"
PROV_REALM = "spitguard-provision"
POLYCOM_UA = "FileTransport PolycomVVX-VVX_450-UA/6.4.3.5018 Type/Application"
TRUNK_NUMBER = "+15550001111"
RV1 = "voIpProt.SIP.requestValidation.1.method"


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one async scenario, bounded as a whole."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def device(
    *,
    edge_port: int = 5060,
    invite: ValidationMethod = "source",
    checksync: ValidationMethod = "source",
    web_ui: bool = False,
    overrides: dict[str, str] | None = None,
) -> DeviceConfig:
    profile = HardeningProfile(
        edge_host="127.0.0.1",
        edge_port=edge_port,
        admin_password=ADMIN,
        invite_validation=invite,
        checksync_validation=checksync,
        web_ui=web_ui,
    )
    line = Line(key=1, aor=f"alice@{DOMAIN}", auth_user="alice", password=USERS["alice"])
    return DeviceConfig(
        mac=MAC, vendor="polycom", lines=(line,), profile=profile, overrides=overrides or {}
    )


# --- a boot server serving PolycomDriver's files ---------------------------------------


@dataclass
class Served:
    path: str
    user_agent: str | None
    status: int
    authenticated: bool


@dataclass
class BootServer:
    """HTTP on 127.0.0.1 under /provision/; digest (RFC 7616) for sensitive files.

    `device` may be swapped between fetches; `edit` rewrites a rendered body (to serve
    what the driver refuses to render); `missing` names files answered with 404.
    """

    device: DeviceConfig
    edit: Callable[[str, bytes], bytes] | None = None
    missing: set[str] = field(default_factory=set)
    password: str = PROV_PASSWORD
    log: list[Served] = field(default_factory=list)
    driver: PolycomDriver = field(default_factory=PolycomDriver)
    _server: asyncio.Server | None = None
    _digest: DigestServer = field(
        default_factory=lambda: DigestServer(secrets.token_bytes(32), PROV_REALM)
    )

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/provision"

    def body(self, name: str) -> bytes | None:
        rendered = self.driver.render(name, self.device)
        if rendered is None or name in self.missing:
            return None
        return self.edit(name, rendered.body) if self.edit else rendered.body

    def version(self, name: str) -> str:
        body = self.body(name)
        assert body is not None
        return hashlib.sha256(body).hexdigest()

    async def __aenter__(self) -> BootServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        method, target, _ = request_line.split(" ")
        headers = {n.strip().lower(): v.strip() for n, _, v in (ln.partition(":") for ln in lines)}
        name = target.removeprefix("/provision/")
        body = self.body(name) if method == "GET" and "/" not in name else None
        status, extra = (404, []) if body is None else (200, [])
        authenticated = False
        if body is not None and name.startswith("spitguard-"):
            authenticated = self._authorized(headers.get("authorization"), target)
            if not authenticated:
                status, body = 401, b""
                extra = [f"WWW-Authenticate: {c}" for c in self._challenges()]
        self.log.append(Served(target, headers.get("user-agent"), status, authenticated))
        payload = body or b""
        out = [f"HTTP/1.1 {status} X", *extra, f"Content-Length: {len(payload)}", "", ""]
        writer.write("\r\n".join(out).encode() + payload)
        await writer.drain()
        writer.close()

    def _challenges(self) -> list[str]:
        from spitguard.sip.auth import format_challenge

        return [format_challenge(c) for c in self._digest.challenge(time.time())]

    def _authorized(self, header: str | None, target: str) -> bool:
        if header is None:
            return False
        creds = parse_credentials(header)
        if creds.uri != target:
            return False

        def ha1(user: str, realm: str, algorithm: str) -> str | None:
            ok = user == PROV_USER
            return compute_ha1(algorithm, user, realm, self.password) if ok else None

        result = self._digest.verify(creds, method="GET", ha1=ha1, now=time.time())
        return result is DigestResult.OK


def null_validation(name: str, body: bytes) -> bytes:
    """Validation rule 1 switched off, as a hand-edited (or Wazo-style) file would have it."""
    return body.replace(f'{RV1}="source"'.encode(), f'{RV1}="Null"'.encode())


def new_phone(server: BootServer, n: int, **kw: Any) -> ReferencePhone:
    return ReferencePhone(
        MAC,
        ip=phone_ip(n),
        provisioning_url=server.url,
        prov_user=PROV_USER,
        prov_password=PROV_PASSWORD,
        **kw,
    )


# --- a raw SIP peer (scanner, or the edge's address for NOTIFY) -------------------------


class Peer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[Response | Request] = []
        self.transport: asyncio.DatagramTransport | None = None
        self._changed = asyncio.Event()

    @classmethod
    async def open(cls, ip: str) -> Peer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, local_addr=(ip, 0))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.append(parse(data))
        self._changed.set()

    def send(self, message: Request, phone: ReferencePhone) -> None:
        assert self.transport is not None
        self.transport.sendto(message.to_bytes(), (phone.ip, phone.sip_port))

    def responses(self, call_id: str, cseq: int | None = None) -> list[Response]:
        return [
            m
            for m in self.received
            if isinstance(m, Response)
            and m.call_id == call_id
            and (cseq is None or m.cseq.number == cseq)
        ]

    async def final(self, call_id: str, cseq: int, timeout: float = 5.0) -> Response:
        async def wait() -> Response:
            while True:
                finals = [r for r in self.responses(call_id, cseq) if r.status >= 200]
                if finals:
                    return finals[0]
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(wait(), timeout)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def request(
    method: str,
    peer: Peer,
    phone: ReferencePhone,
    *,
    call_id: str,
    cseq: int = 1,
    to_tag: str | None = None,
    from_tag: str = "scan1",
    event: str | None = None,
    authorization: str | None = None,
) -> Request:
    host, port = peer.addr
    uri = parse_uri(f"sip:alice@{phone.ip}:{phone.sip_port}")
    to = f"<sip:alice@{phone.ip}>" + (f";tag={to_tag}" if to_tag else "")
    fields = [
        ("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport"),
        ("Max-Forwards", "70"),
        ("From", f'"100" <sip:100@{host}>;tag={from_tag}'),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
        ("Contact", f"<sip:100@{host}:{port}>"),
        ("User-Agent", "friendly-scanner"),
    ]
    if event is not None:
        fields += [("Event", event), ("Subscription-State", "terminated")]
    if authorization is not None:
        fields.append(("Authorization", authorization))
    return Request(method, uri, fields)


async def dial(peer: Peer, phone: ReferencePhone, **kw: Any) -> Response:
    """A direct INVITE; its final response (ACKed when it is an error)."""
    call_id = kw.pop("call_id", secrets.token_hex(8))
    invite = request("INVITE", peer, phone, call_id=call_id, **kw)
    peer.send(invite, phone)
    final = await peer.final(call_id, kw.get("cseq", 1))
    if final.status >= 300:
        ack = request("ACK", peer, phone, call_id=call_id, cseq=kw.get("cseq", 1))
        ack.set("Via", invite.get("Via"))
        ack.set("To", final.get("To"))
        peer.send(ack, phone)
    return final


async def hang_up(peer: Peer, phone: ReferencePhone, ok: Response) -> None:
    call_id, tag = ok.call_id, ok.to.tag
    peer.send(request("ACK", peer, phone, call_id=call_id, to_tag=tag), phone)
    peer.send(request("BYE", peer, phone, call_id=call_id, cseq=2, to_tag=tag), phone)
    assert (await peer.final(call_id, 2)).status == 200


@contextlib.asynccontextmanager
async def peer_at(ip: str) -> Any:
    peer = await Peer.open(ip)
    try:
        yield peer
    finally:
        peer.close()


# --- sans-I/O: what the phone makes of its files ------------------------------------------


def test_master_macro_and_first_file_wins() -> None:
    master = b'<APPLICATION CONFIG_FILES="[PHONE_MAC_ADDRESS]-a.cfg, common.cfg"/>'
    assert parse_master(master, "0004F2A1B2C3") == ["0004f2a1b2c3-a.cfg", "common.cfg"]
    first = parse_config(b'<x><y reg.1.address="1001" httpd.enabled="0"/></x>')
    second = parse_config(b'<p reg.1.address="9999" httpd.cfg.enabled="0"/>')
    # phones.md §1.3 [V]: "the first file that contains a parameter wins".
    assert merge([first, second]) == {
        "reg.1.address": "1001",
        "httpd.enabled": "0",
        "httpd.cfg.enabled": "0",
    }


def test_apply_reads_validation_device_and_httpd_like_a_polycom() -> None:
    base = {
        "voIpProt.SIP.requestValidation.1.request": "INVITE",
        "voIpProt.SIP.requestValidation.1.method": "source",
        "voIpProt.SIP.requestValidation.2.request": "NOTIFY",
        "voIpProt.SIP.requestValidation.2.method": "digest",
        "voIpProt.SIP.requestValidation.2.request.1.event": "check-sync",
        "voIpProt.SIP.requestValidation.3.request": "OPTIONS",
        "voIpProt.SIP.requestValidation.3.method": "sourse",  # a typo is Null on the phone
        "reg.1.server.1.address": "localhost",
        "device.auth.localAdminPassword": "s3cret-admin",
        "device.auth.localAdminPassword.set": "1",
    }
    settings = apply(base)
    assert settings.checks_for("INVITE") == {"source"}
    assert settings.checks_for("NOTIFY", "check-sync") == {"digest"}
    assert settings.checks_for("NOTIFY", "message-summary") == frozenset()
    assert settings.checks_for("OPTIONS") == frozenset()
    assert settings.trusted_sources({}) == {"127.0.0.1", "::1"}
    assert settings.digest_realm == "PolycomSPIP"
    assert settings.web_ui_enabled  # httpd.* default to 1
    # device.* needs device.set="1" as well as its own .set="1".
    assert settings.admin_password == FACTORY_ADMIN_PASSWORD
    assert apply({**base, "device.set": "1"}).admin_password == "s3cret-admin"
    assert apply({**base, "voIpProt.SIP.requestValidation.1.method": "Null"}).rules[0].index == 2


def test_sip_user_agent_drops_the_file_transport_parts() -> None:
    assert sip_user_agent(POLYCOM_UA) == "PolycomVVX-VVX_450-UA/6.4.3.5018"


# --- boot ---------------------------------------------------------------------------------


def test_boot_fetches_mac_cfg_then_the_hardened_file_with_digest() -> None:
    async def scenario() -> None:
        async with BootServer(device()) as server:
            phone = new_phone(server, 150)
            async with phone:
                await phone.boot(register=False)
                assert [(s.path, s.status) for s in server.log] == [
                    (f"/provision/{MAC}.cfg", 200),
                    (f"/provision/spitguard-{MAC}.cfg", 401),
                    (f"/provision/spitguard-{MAC}.cfg", 200),
                ]
                assert {s.user_agent for s in server.log} == {POLYCOM_UA}
                assert server.log[-1].authenticated

                assert phone.params[RV1] == "source"
                assert phone.params["voIpProt.SIP.requestValidation.1.request"] == "INVITE"
                assert phone.params["reg.1.address"] == f"alice@{DOMAIN}"
                assert phone.params["reg.1.auth.password"] == USERS["alice"]
                assert phone.trusted_sources == {"127.0.0.1"}
                assert not phone.web_ui_enabled
                assert phone.admin_password_changed
                assert phone.verify_admin_password(ADMIN)
                assert not phone.verify_admin_password(FACTORY_ADMIN_PASSWORD)
                (record,) = phone.fetches
                assert record.ok and record.reason == "boot"
                name = f"spitguard-{MAC}.cfg"
                assert record.versions[name] == server.version(name)

    run(scenario())


def test_boot_falls_back_to_the_generic_master_and_survives_a_wrong_password() -> None:
    async def scenario() -> None:
        async with BootServer(device(), missing={f"{MAC}.cfg"}, password="other") as server:
            phone = new_phone(server, 151)
            async with phone:
                await phone.boot(register=False)
                assert [(s.path, s.status) for s in server.log] == [
                    (f"/provision/{MAC}.cfg", 404),
                    ("/provision/000000000000.cfg", 200),
                    (f"/provision/spitguard-{MAC}.cfg", 401),  # macro substituted
                    (f"/provision/spitguard-{MAC}.cfg", 401),  # wrong credentials
                ]
                (record,) = phone.fetches
                assert not record.ok
                assert record.files[0].status == 401 and record.files[0].authenticated
                # Nothing hardened was applied: the factory state remains.
                assert "reg.1.address" not in phone.params
                assert phone.web_ui_enabled
                assert phone.verify_admin_password(FACTORY_ADMIN_PASSWORD)

    run(scenario())


# --- request validation, without an edge ------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(None, 400, id="source-refuses-the-scanner"),
        pytest.param(null_validation, 200, id="null-rings-for-the-scanner"),
    ],
)
def test_a_scanners_direct_invite(
    edit: Callable[[str, bytes], bytes] | None, expected: int
) -> None:
    async def scenario() -> None:
        async with BootServer(device(), edit=edit) as server, peer_at(scanner_ip(7)) as scanner:
            phone = new_phone(server, 152)
            async with phone:
                await phone.boot(register=False)
                final = await dial(scanner, phone)
                assert final.status == expected, final
                if expected == 400:
                    assert phone.calls == []
                    assert [(r.method, r.status, r.check) for r in phone.rejections] == [
                        ("INVITE", 400, "source")
                    ]
                    return
                # The ghost call: 100, 180, 200 with SDP, then ACK and BYE.
                statuses = [r.status for r in scanner.responses(final.call_id, 1)]
                assert statuses == [100, 180, 200], statuses
                assert final.get("Content-Type") == "application/sdp" and final.body
                await hang_up(scanner, phone, final)
                await phone.wait_for(lambda: phone.calls and phone.calls[0].ended, 5, "BYE")
                (call,) = phone.calls
                assert call.source[0] == scanner_ip(7)
                assert call.caller == f"sip:100@{scanner_ip(7)}"
                assert call.established and call.end_reason == "BYE"

    run(scenario())


def test_digest_validation_challenges_and_accepts_only_the_line_credentials() -> None:
    overrides = {"voIpProt.SIP.requestValidation.digest.realm": "acme-phones"}

    async def scenario() -> None:
        dev = device(invite="digest", overrides=overrides)
        async with BootServer(dev) as server, peer_at(scanner_ip(8)) as scanner:
            phone = new_phone(server, 153)
            async with phone:
                await phone.boot(register=False)
                challenged = await dial(scanner, phone)
                assert challenged.status == 401
                (challenge,) = challenged.www_authenticate
                assert challenge.realm == "acme-phones"
                assert phone.calls == []

                async def answer(password: str) -> Response:
                    call_id = secrets.token_hex(8)
                    first = await dial(scanner, phone, call_id=call_id)
                    creds = DigestClient("alice", password).authorize(
                        first.www_authenticate[0], method="INVITE", uri=f"sip:alice@{phone.ip}"
                    )
                    auth = format_credentials(creds)
                    return await dial(scanner, phone, call_id=call_id, cseq=2, authorization=auth)

                assert (await answer("guess-1234")).status == 401
                assert phone.calls == []
                ok = await answer(USERS["alice"])
                assert ok.status == 200
                assert len(phone.calls) == 1 and phone.calls[0].line == 1

    run(scenario())


def test_check_sync_refetches_only_when_validation_passes() -> None:
    async def scenario() -> None:
        async with (
            BootServer(device()) as server,
            peer_at("127.0.0.1") as edge_address,
            peer_at(scanner_ip(9)) as scanner,
        ):
            phone = new_phone(server, 154)
            async with phone:
                await phone.boot(register=False)
                name = f"spitguard-{MAC}.cfg"
                booted = server.version(name)

                # A scanner's check-sync is refused like its INVITE: 400, no fetch.
                call_id = secrets.token_hex(8)
                scanner.send(
                    request("NOTIFY", scanner, phone, call_id=call_id, event="check-sync"), phone
                )
                assert (await scanner.final(call_id, 1)).status == 400
                assert len(phone.fetches) == 1

                # The boot server changes the device, then the edge's address (any port:
                # the source check compares IP addresses only) pushes check-sync.
                server.device = device(web_ui=True)
                assert server.version(name) != booted
                call_id = secrets.token_hex(8)
                notify = request("NOTIFY", edge_address, phone, call_id=call_id, event="check-sync")
                edge_address.send(notify, phone)
                assert (await edge_address.final(call_id, 1)).status == 200
                await phone.wait_for(lambda: len(phone.fetches) == 2, 5, "the re-fetch")
                record = phone.fetches[-1]
                assert record.ok and record.reason == "check-sync"
                assert record.versions[name] == server.version(name)
                assert phone.web_ui_enabled

    run(scenario())


def test_check_sync_with_digest_needs_the_line_credentials() -> None:
    async def scenario() -> None:
        async with (
            BootServer(device(checksync="digest")) as server,
            peer_at(scanner_ip(10)) as other,
        ):
            phone = new_phone(server, 155)
            async with phone:
                await phone.boot(register=False)
                call_id = secrets.token_hex(8)
                other.send(
                    request("NOTIFY", other, phone, call_id=call_id, event="check-sync"), phone
                )
                challenged = await other.final(call_id, 1)
                assert challenged.status == 401
                assert challenged.www_authenticate[0].realm == "PolycomSPIP"
                creds = DigestClient("alice", USERS["alice"]).authorize(
                    challenged.www_authenticate[0], method="NOTIFY", uri=f"sip:alice@{phone.ip}"
                )
                notify = request(
                    "NOTIFY",
                    other,
                    phone,
                    call_id=call_id,
                    cseq=2,
                    event="check-sync",
                    authorization=format_credentials(creds),
                )
                other.send(notify, phone)
                assert (await other.final(call_id, 2)).status == 200
                await phone.wait_for(lambda: len(phone.fetches) == 2, 5, "the re-fetch")

    run(scenario())


async def http_status(port: int, authorization: str | None = None) -> int:
    reader, writer = await asyncio.open_connection(phone_ip(156), port)
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    writer.write(f"GET / HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode())
    status = int((await asyncio.wait_for(reader.readline(), 5)).split()[1])
    writer.close()
    return status


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"Polycom:{password}".encode()).decode()


@pytest.mark.parametrize("web_ui", [False, True])
def test_web_ui_follows_httpd_and_takes_the_admin_password(web_ui: bool) -> None:
    port = free_port(phone_ip(156), "tcp")

    async def scenario() -> None:
        async with BootServer(device(web_ui=web_ui)) as server:
            phone = new_phone(server, 156, web_port=port)
            async with phone:
                await phone.boot(register=False)
                assert phone.web_ui_enabled is web_ui
                if not web_ui:
                    with pytest.raises(ConnectionRefusedError):
                        await http_status(port)
                    return
                assert await http_status(port) == 200  # the login page
                assert await http_status(port, basic(ADMIN)) == 200
                assert await http_status(port, basic(FACTORY_ADMIN_PASSWORD)) == 401

    run(scenario())


# --- through the real edge ----------------------------------------------------------------


@pytest.fixture
def edge_and_upstream(tmp_path: Path) -> Iterator[tuple[Any, int]]:
    require_tool("sipp", "sip-tester")
    upstream_port = free_port(UPSTREAM_IP, "udp")
    with running_edge(
        tmp_path,
        upstream=[f"sip:{UPSTREAM_IP}:{upstream_port};transport=udp"],
        trusted=[f"{UPSTREAM_IP}/32"],
    ) as edge:
        try:
            yield edge, upstream_port
        finally:
            print(f"--- edge log ({edge.stderr_path}):\n{edge.log()}")


@pytest.mark.edge
def test_phone_registers_at_the_edge_takes_the_trunks_call_and_refuses_a_scanner(
    edge_and_upstream: tuple[Any, int], tmp_path: Path
) -> None:
    edge, _ = edge_and_upstream
    clock = ManualClock()

    # The real boot server of the running `spitguard serve` (digest user = the MAC).
    r = edge.cli("device", "add", MAC, "--tenant", "acme", "--line", f"1=alice@{DOMAIN}")
    assert r.returncode == 0, r.stderr
    shown = edge.cli("device", "show", MAC, "--secrets", "--json")
    password = json.loads(shown.stdout)["provisioning_password"]
    portal = next(ln for ln in edge.banner.splitlines() if "portal:" in ln)
    url = portal.split("portal:", 1)[1].strip().rstrip("/") + "/provision"

    async def scenario() -> None:
        phone = ReferencePhone(
            MAC,
            ip=phone_ip(157),
            provisioning_url=url,
            prov_user=MAC,
            prov_password=password,
            clock=clock,
        )
        async with phone, peer_at(scanner_ip(11)) as scanner:
            await phone.boot()
            reg = await phone.wait_registered(timeout=10)
            assert reg.target == ("127.0.0.1", edge.udp_port)
            assert reg.last_status == 200 and reg.expires == 3600

            trunk = Sipp(
                "upstream_call.xml",
                workdir=tmp_path / "sipp",
                local_ip=UPSTREAM_IP,
                remote=edge.addr,
                user=TRUNK_NUMBER,
                service="alice",
                call_duration_ms=100,
                keys={"domain": DOMAIN},
                timeout=10.0,
            )
            result = await asyncio.to_thread(trunk.run)
            result.assert_ok()
            await phone.wait_for(lambda: phone.calls and phone.calls[0].ended, 5, "BYE")
            (call,) = phone.calls
            assert call.source[0] == "127.0.0.1"  # through the edge, the only origin
            assert call.caller.startswith(f"sip:{TRUNK_NUMBER}@")
            assert call.line == 1 and call.established and call.end_reason == "BYE"

            # The same phone, dialled directly by a scanner: 400, no call.
            assert (await dial(scanner, phone)).status == 400
            assert len(phone.calls) == 1

            # The refresh is due expires.overlap (60 s) before expiry, on the clock.
            await phone.wait_for(lambda: clock.sleepers > 0, 5, "the refresh timer")
            assert reg.refresh_at == pytest.approx(clock.now() + 3600 - 60)
            clock.advance(3600 - 60)
            await phone.wait_for(lambda: reg.successes == 2, 10, "the re-REGISTER")
            assert reg.state == "registered" and reg.cseq >= 4

        assert phone.registrations[1].state == "unregistered"  # stop() unregistered

    run(scenario(), timeout=90)
