"""The auditor against real targets on loopback, and the `spitguard audit` command.

Targets: the reference phone (`spitguard.phone`) booted from test_phone's boot server with
source or digest validation (answers), with validation Null (rings); a small UDP peer that
rings and records the CANCEL; a host that never answers (silent); the running spitguard
edge probed from an untrusted scanner address (silent); the phone's web UI (login page)
and a small HTTP server handing out a configuration without authentication.

Roles: phones and other targets 127.0.1.x, the auditor 127.0.66.x, the edge 127.0.0.1.
Every address is on 127.0.0.0/8; every wait is bounded by the probe's own timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from edge_server import running_edge
from peers import free_port, phone_ip, scanner_ip
from spitguard.audit import AuditOptions, Pacer, Target, TargetResult, Timing, run_audit
from spitguard.cli import main
from spitguard.config import Settings
from spitguard.sip.message import Request, make_response, parse
from spitguard.store import open_store
from spitguard.store.repos import BindingRecord
from spitguard.transport.tls import ensure_self_signed, server_context
from test_phone import BootServer, device, new_phone, null_validation, run

FAST = Timing(t1=0.05, t2=0.2, retries=1, timeout=0.4)
FAST_ARGS = ["--t1", "0.05", "--retries", "1", "--timeout", "0.4", "--rate", "500"]
CONFIG = (
    b'<?xml version="1.0"?><PHONE_CONFIG><ALL reg.1.address="1001@acme.test" '
    b'reg.1.auth.password="leaked-secret-1" voIpProt.server.1.address="sip.acme.test"/>'
    b"</PHONE_CONFIG>"
)


def options(source: int, **kw: Any) -> AuditOptions:
    base: dict[str, Any] = {
        "web_ports": (),
        "source": scanner_ip(source),
        "timing": FAST,
        "rate": 500.0,
    }
    base.update(kw)
    return AuditOptions(**base)


def only(results: list[TargetResult]) -> TargetResult:
    (result,) = results
    assert result.error is None, result.error
    return result


def sip(result: TargetResult, transport: str) -> Any:
    return next(r for r in result.sip if r.transport == transport)


# --- small loopback peers -----------------------------------------------------------------


class RingingPeer(asyncio.DatagramProtocol):
    """Answers OPTIONS 200 and INVITE 180; on CANCEL: 200, then 487 for the INVITE.
    Records every message it receives and sends, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []  # ("<", "INVITE") received, (">", "180") sent
        self.received: list[Request] = []
        self.transport: asyncio.DatagramTransport | None = None
        self._invite: Request | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def _send(self, req: Request, status: int, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(make_response(req, status, to_tag="rp1").to_bytes(), addr)
        self.log.append((">", f"{status} {req.method}"))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        msg = parse(data)
        assert isinstance(msg, Request)
        self.received.append(msg)
        self.log.append(("<", msg.method))
        if msg.method == "OPTIONS":
            self._send(msg, 200, addr)
        elif msg.method == "INVITE" and self._invite is None:
            self._invite = msg
            self._send(msg, 180, addr)
        elif msg.method == "CANCEL" and self._invite is not None:
            self._send(msg, 200, addr)
            self._send(self._invite, 487, addr)


class Sink(asyncio.DatagramProtocol):
    """A UDP port that reads everything and never answers."""

    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append(data)


@contextlib.asynccontextmanager
async def udp(factory: Callable[[], asyncio.DatagramProtocol], ip: str) -> AsyncIterator[Any]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(factory, local_addr=(ip, 0))
    try:
        yield proto, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def http_server(
    ip: str, routes: dict[str, tuple[int, bytes]], tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """HTTP/1.1 (over TLS with `tls`) on ip: GET path -> (status, body); anything else
    404. Yields the port."""
    requests: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
        path = head.split(" ")[1]
        requests.append(path)
        status, body = routes.get(path, (404, b""))
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            .encode() + body
        )  # fmt: skip
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, ip, 0, ssl=tls)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


# --- the reference phone ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("invite", "status", "number"),
    [pytest.param("source", 400, 170, id="source"), pytest.param("digest", 401, 171, id="digest")],
)
def test_phone_with_validation_answers_and_never_rings(
    invite: Any, status: int, number: int
) -> None:
    async def scenario() -> None:
        async with BootServer(device(invite=invite)) as server:
            phone = new_phone(server, number)
            async with phone:
                await phone.boot(register=False)
                target = Target(phone.ip, phone.sip_port)
                result = only(await run_audit([target], options(60)))
                assert result.verdict == "answers" and result.exposed
                udp_result = sip(result, "udp")
                assert [(r.method, r.status) for r in udp_result.responses] == [
                    ("OPTIONS", 200),  # validation covers INVITE only, as provisioned
                    ("INVITE", status),
                ]
                assert sip(result, "tcp").verdict == "silent"  # the phone speaks UDP only
                assert sip(result, "tcp").note == "connection refused"
                assert phone.calls == []
                assert [(r.method, r.source[0]) for r in phone.rejections] == [
                    ("INVITE", scanner_ip(60))
                ]

    run(scenario())


def test_phone_without_validation_rings_and_the_call_ends_at_once() -> None:
    async def scenario() -> None:
        async with BootServer(device(), edit=null_validation) as server:
            phone = new_phone(server, 172)
            async with phone:
                await phone.boot(register=False)
                opts = options(61, transports=("udp",))
                result = only(await run_audit([Target(phone.ip, phone.sip_port)], opts))
                assert result.verdict == "rings"
                trace = list(sip(result, "udp").trace)
                # The phone answers 100, 180 and 200 at once: the CANCEL goes right after
                # the first provisional, and the answered call gets ACK and BYE.
                assert trace.index("> CANCEL") == trace.index("< 100 Trying (INVITE)") + 1
                assert trace.index("> BYE") == trace.index("> ACK") + 1
                assert "< 200 OK (BYE)" in trace
                await phone.wait_for(lambda: phone.calls and phone.calls[0].ended, 5, "BYE")
                (call,) = phone.calls
                assert call.source[0] == scanner_ip(61)
                assert call.caller == f"sip:100@{phone.ip}"  # To = From = 100@target
                assert call.established and call.end_reason == "BYE"

    run(scenario())


def test_the_cancel_follows_the_provisional_response_on_the_wire() -> None:
    async def scenario() -> None:
        async with udp(RingingPeer, phone_ip(173)) as (peer, port):
            opts = options(62, transports=("udp",))
            result = only(await run_audit([Target(phone_ip(173), port)], opts))
        assert result.verdict == "rings"
        assert peer.log == [
            ("<", "OPTIONS"),
            (">", "200 OPTIONS"),
            ("<", "INVITE"),
            (">", "180 INVITE"),
            ("<", "CANCEL"),  # right after the 180, before anything else
            (">", "200 CANCEL"),
            (">", "487 INVITE"),
            ("<", "ACK"),
        ]
        invite, cancel = peer.received[1], peer.received[2]
        assert cancel.via.branch == invite.via.branch and cancel.call_id == invite.call_id
        assert cancel.cseq.number == invite.cseq.number
        assert [r.status for r in sip(result, "udp").responses] == [200, 180, 200, 487]

    run(scenario())


# --- silence: a dead host, and the edge itself --------------------------------------------


def test_a_host_that_never_answers_is_silent_and_every_send_is_paced() -> None:
    async def scenario() -> None:
        accepted: list[int] = []

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            await reader.read()  # reads the OPTIONS, never answers
            writer.close()

        async with udp(Sink, phone_ip(174)) as (sink, port):
            server = await asyncio.start_server(hold, phone_ip(174), port)
            try:
                pacer = Pacer(rate=500.0, burst=2)
                opts = options(63, timing=Timing(t1=0.05, t2=0.2, retries=2, timeout=0.3))
                results = await run_audit([Target(phone_ip(174), port)], opts, pacer=pacer)
            finally:
                server.close()
                await server.wait_closed()
        result = only(results)
        assert result.verdict == "silent" and not result.exposed
        assert sip(result, "tcp").trace == ("> OPTIONS", "- no answer to OPTIONS", "> INVITE",
                                            "- no answer to INVITE")  # fmt: skip
        methods = [parse(d).method for d in sink.datagrams]  # type: ignore[union-attr]
        assert methods == ["OPTIONS"] * 3 + ["INVITE"] * 3  # each sent once + 2 retries
        # Every packet and connection went through the pacer: 6 datagrams, 1 TCP
        # connection, 2 messages on it.
        assert pacer.sent == len(sink.datagrams) + len(accepted) + 2 == 9

    run(scenario())


@contextlib.contextmanager
def edge_on_free_ports(tmp_path: Path) -> Iterator[Any]:
    """running_edge, tried again when another suite took its free port before it bound
    (the harness picks ports, then the edge binds them: a race on a shared machine)."""
    for attempt in range(3):
        where = tmp_path / f"try{attempt}"
        where.mkdir()
        stack = contextlib.ExitStack()
        try:
            edge = stack.enter_context(running_edge(where, trusted=["127.0.2.1/32"]))
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == 2:
                raise
            continue
        with stack:
            yield edge
        return


def test_the_edge_is_silent_towards_scanner_shaped_probes(tmp_path: Path) -> None:
    with edge_on_free_ports(tmp_path) as edge:

        async def scenario() -> list[TargetResult]:
            return await run_audit([Target("127.0.0.1", edge.udp_port)], options(64))

        result = only(run(scenario()))
        assert [(r.transport, r.verdict, r.responses) for r in result.sip] == [
            ("udp", "silent", ()),
            ("tcp", "silent", ()),
        ]
        assert not result.exposed


# --- web UI and configuration ---------------------------------------------------------------


def test_web_login_page_and_unauthenticated_configuration_are_exposed() -> None:
    web_port = free_port(phone_ip(175), "tcp")

    async def scenario() -> None:
        async with BootServer(device(web_ui=True)) as server:
            phone = new_phone(server, 175, web_port=web_port)
            async with (
                phone,
                http_server(
                    phone_ip(176), {"/provision/000000000000.cfg": (200, CONFIG)}
                ) as cfg_port,
            ):
                await phone.boot(register=False)
                opts = options(65, transports=(), web_ports=(web_port,))
                web = only(await run_audit([Target(phone.ip, phone.sip_port)], opts))
                assert web.web_ui and not web.config and web.exposed
                front = web.http[0]
                assert (front.path, front.status, front.kind) == ("/", 200, "login")
                assert "password-field" in front.markers

                opts = options(66, transports=(), web_ports=(cfg_port,))
                leak = only(await run_audit([Target(phone_ip(176), 5060)], opts))
                assert leak.config and leak.exposed
                assert [(f.path, f.status, f.kind) for f in leak.http] == [
                    ("/", 404, "other"),
                    ("/000000000000.cfg", 404, "other"),
                    ("/provision/000000000000.cfg", 200, "config"),
                ]
                assert "leaked-secret-1" not in json.dumps(leak.to_json())

    run(scenario())


def test_a_web_ui_over_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "phone.crt", tmp_path / "phone.key"
    ensure_self_signed(cert, key, phone_ip(183))
    login = b'<html><title>Login</title><input type="password" name="pw"></html>'

    async def scenario() -> TargetResult:
        tls = server_context(cert, key)
        async with http_server(phone_ip(183), {"/": (200, login)}, tls) as port:
            opts = options(70, transports=(), web_ports=(port,), tls_ports=frozenset({port}))
            return only(await run_audit([Target(phone_ip(183), 5060)], opts))

    result = run(scenario())
    front = result.http[0]
    assert (front.scheme, front.status, front.kind) == ("https", 200, "login")
    assert result.web_ui and result.exposed


# --- the command --------------------------------------------------------------------------


@contextlib.contextmanager
def listening(ip: str) -> Iterator[tuple[socket.socket, socket.socket, int]]:
    """A UDP socket and a TCP listener on the same free port, non-blocking."""
    port = free_port(ip)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        u.bind((ip, port))
        t.bind((ip, port))
        t.listen()
        u.setblocking(False)
        t.setblocking(False)
        yield u, t, port


def test_dry_run_lists_the_sends_and_sends_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with listening(phone_ip(177)) as (u, t, port):
        code = main(
            ["audit", f"{phone_ip(177)}:{port}", "--dry-run", "--web-ports", f"{port},9443/tls"]
        )
        out = capsys.readouterr().out.splitlines()
        assert code == 0
        assert out[0] == f"sip/udp {phone_ip(177)}:{port}  OPTIONS sip:100@{phone_ip(177)}:{port}"
        assert any(line.startswith(f"sip/tcp {phone_ip(177)}:{port}  INVITE") for line in out)
        assert f"http://{phone_ip(177)}:{port}  GET /" in out
        assert f"https://{phone_ip(177)}:9443  GET /" in out
        # On loopback a datagram or connection would already be queued: there is none.
        with pytest.raises(BlockingIOError):
            u.recv(65535)
        with pytest.raises(BlockingIOError):
            t.accept()


def test_json_output_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> None:
        async with BootServer(device()) as server:
            phone = new_phone(server, 178)
            async with phone:
                await phone.boot(register=False)
                with listening(phone_ip(179)) as (_, _, quiet):
                    argv = [
                        "audit", f"{phone.ip}:{phone.sip_port}", f"{phone_ip(179)}:{quiet}",
                        "--json", "--no-store", "--web-ports", "none",
                        "--source", scanner_ip(67), *FAST_ARGS,
                    ]  # fmt: skip
                    code = await asyncio.to_thread(main, argv)
                out = json.loads(capsys.readouterr().out)
                assert code == 1  # the phone answers: exposed
                assert out["summary"] == {
                    "targets": 2, "exposed": 1, "rings": 0, "answers": 1, "silent": 1,
                    "web_ui": 0, "config": 0, "errors": 0,
                }  # fmt: skip
                first, second = out["results"]  # worst first
                assert first["target"] == f"{phone.ip}:{phone.sip_port}"
                assert first["verdict"] == "answers" and first["exposed"] is True
                assert {s["transport"] for s in first["sip"]} == {"udp", "tcp"}
                udp_first = next(s for s in first["sip"] if s["transport"] == "udp")
                assert udp_first["responses"][-1] == {
                    "method": "INVITE", "status": 400, "reason": "Bad Request",
                    "agent": "PolycomVVX-VVX_450-UA/6.4.3.5018",
                }  # fmt: skip
                assert (second["verdict"], second["exposed"], second["http"]) == (
                    "silent", False, [],
                )  # fmt: skip

    run(scenario())

    with listening(phone_ip(180)) as (_, _, quiet):
        argv = ["audit", f"{phone_ip(180)}:{quiet}", "--no-store", "--web-ports", "none"]
        assert main([*argv, "--source", scanner_ip(68), *FAST_ARGS]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == [
        "TARGET", "VERDICT", "UDP", "TCP", "WEB", "UI", "CONFIG", "DEVICE",
    ]  # fmt: skip
    assert f"{phone_ip(180)}:{quiet}  silent" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "nothing to audit"),
        (["127.0.0.0/16"], "holds 65536 addresses, more than the cap of 256"),
        (["127.0.1.0/24", "--max-targets", "10"], "--max-targets 256"),
        (["127.0.1.1", "--tenant", "acme"], "--tenant needs --registrations"),
        (["127.0.1.1", "--source", "not-an-ip"], "is not an IP address"),
        (["127.0.1.1", "--web-ports", "80,http"], "bad web port"),
        (["127.0.1.1", "--rate", "0"], "--rate must be above 0"),
        (["127.0.1.1", "--provisioning-paths", "x.cfg"], "paths start with /"),
        (["127.0.1.1:99999"], "bad port"),
    ],
)
def test_usage_errors_exit_2_and_send_nothing(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", *argv, "--no-store"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_source_not_on_this_host_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["audit", "127.0.1.181", "--no-store", "--source", "192.0.2.1", *FAST_ARGS])
    assert code == 2
    assert "cannot send from 192.0.2.1" in capsys.readouterr().err


def test_registrations_are_audited_and_stored_per_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    config = tmp_path / "spitguard.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    mac = "0004f2000182"

    with listening(phone_ip(182)) as (_, _, port):

        async def setup() -> None:
            store = await open_store(settings)
            try:
                await store.tenants.add("acme", ["acme.test"])
                await store.lines.add("1001@acme.test", tenant="acme", password="Passw0rd-1234")
                await store.devices.add(mac, tenant="acme", lines=[(1, "1001@acme.test")])
                await store.bindings.upsert(
                    BindingRecord(
                        tenant_id=1,
                        aor="sip:1001@acme.test",
                        contact="sip:1001@192.168.1.20:5060",
                        call_id="c",
                        cseq=1,
                        expires_at=4e9,
                        transport="udp",
                        local_host="127.0.0.1",
                        local_port=5060,
                        remote_host=phone_ip(182),
                        remote_port=port,
                        conn_id=0,
                        received_at=0.0,
                    )
                )
            finally:
                await store.close()

        asyncio.run(setup())
        argv = ["audit", "--registrations", "--tenant", "acme", "--config", str(config)]
        code = main([*argv, "--web-ports", "none", "--source", scanner_ip(69), *FAST_ARGS])
    assert code == 0, capsys.readouterr().err
    assert mac in capsys.readouterr().out

    async def stored() -> Any:
        store = await open_store(settings)
        try:
            return await store.audits.latest_for_device(mac), await store.audits.runs()
        finally:
            await store.close()

    latest, runs = asyncio.run(stored())
    assert latest.verdict == "silent" and latest.aor == "sip:1001@acme.test"
    assert (latest.host, latest.port) == (phone_ip(182), port)
    assert len(runs) == 1 and runs[0].options["source"] == scanner_ip(69)


# --- audits started through the API of the running server -----------------------------------


def test_an_audit_started_through_the_api_finds_the_registered_phone_answering(
    tmp_path: Path,
) -> None:
    """The reference phone boots from the edge's boot server (source validation: INVITEs
    only from the edge), registers, and an operator starts an audit with an API token. The
    server probes from `audit.source`, an address the phone does not trust: it answers 400,
    so the verdict is "answers", shown next to the registration and the device."""
    from edge_client import wait_for
    from spitguard.phone import ReferencePhone
    from web_fixtures import ACME_MAC, PASSWORDS, login, portal_edge

    source = scanner_ip(70)
    extra = f'[audit]\nsource = "{source}"\n'
    with portal_edge(tmp_path, extra=extra) as pe:
        secrets = json.loads(pe.edge.cli("device", "show", ACME_MAC, "--secrets", "--json").stdout)

        async def scenario() -> tuple[dict[str, Any], str, str]:
            phone = ReferencePhone(
                ACME_MAC,
                ip=phone_ip(190),
                provisioning_url=f"{pe.base}/provision",
                prov_user=ACME_MAC,
                prov_password=secrets["provisioning_password"],
                user_agent="FileTransport PolycomVVX-VVX_450-UA/6.4.3.5018 Type/Application",
            )
            async with phone:
                await phone.boot()
                await phone.wait_registered(timeout=10)

                def audit() -> dict[str, Any]:
                    with pe.client(token_of="op") as op:
                        wait_for(lambda: op.get("/api/v1/registrations").json()["total"] == 1)
                        started = op.post("/api/v1/audits", json={})
                        assert started.status_code == 202, started.text
                        run_id = started.json()["id"]
                        found: dict[str, Any] = {}

                        def done() -> bool:
                            found.update(op.get(f"/api/v1/audits/{run_id}").json())
                            return found["state"] != "running"

                        wait_for(done, timeout=60)
                        return found

                def portal() -> tuple[str, str]:
                    with pe.client() as s:
                        assert login(s, "op", PASSWORDS["op"]).status_code == 303
                        return s.get("/registrations").text, s.get("/devices").text

                run = await asyncio.to_thread(audit)
                regs, devices = await asyncio.to_thread(portal)  # while still registered
                assert phone.calls == []  # it never rang
                assert [(r.method, r.source[0]) for r in phone.rejections] == [("INVITE", source)]
                return run, regs, devices

        run, regs, devices = asyncio.run(asyncio.wait_for(scenario(), 120))
        assert run["state"] == "done" and run["targets"] == 1 and run["exposed"] == 1, run
        (result,) = run["results"]
        assert (result["host"], result["device"]) == (phone_ip(190), ACME_MAC)
        assert result["verdict"] == "answers" and result["exposed"], result
        udp_result = next(t for t in result["details"]["sip"] if t["transport"] == "udp")
        assert [(r["method"], r["status"]) for r in udp_result["responses"]] == [
            ("OPTIONS", 200),
            ("INVITE", 400),
        ]
        # The portal shows the verdict next to the registration and the device.
        row = regs[regs.index('data-aor="sip:alice@') :]
        assert 'data-audit="answers"' in row[: row.index("</tr>")]
        row = devices[devices.index(f'data-mac="{ACME_MAC}"') :]
        assert 'data-audit="answers"' in row[: row.index("</tr>")]
