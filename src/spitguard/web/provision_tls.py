"""The boot server over HTTPS with client certificates (`provision.tls_port`), as an option
beside HTTP digest.

A phone that presents a certificate signed by the configured CA (`provision.tls_client_ca`)
and naming its MAC (subject CN or a DNS subjectAltName) is authenticated by it; a phone
without one still authenticates with digest on the same port. Only `/provision/…` is
served here: the portal and API stay on the web port.

Why not uvicorn: ASGI servers do not hand the verified peer certificate to the app, and
that certificate is the whole point of this port. h11 (the sans-I/O HTTP/1.1 machine
uvicorn also uses) plus asyncio streams is a small adapter over the same sans-I/O
`ProvisionServer` decisions as the HTTP side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h11

from ..provision.profile import InvalidDeviceConfig, normalize_mac
from ..provision.runtime import ProvisionServer
from ..provision.service import ProvisionRequest
from ..transport.tls import server_context
from .provision import PREFIX

log = logging.getLogger(__name__)

_READ = 65536
_IDLE_TIMEOUT = 30.0  # seconds a connection may sit between requests
_MAX_HEADER = 16384


def client_cert_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The edge's certificate; with `client_ca`, client certificates are asked for and,
    when presented, must chain to it (a phone without one falls back to digest)."""
    ctx = server_context(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def mac_of_certificate(peercert: dict[str, Any] | None) -> str | None:
    """The MAC a verified peer certificate names: subject CN first, then DNS SANs."""
    if not peercert:
        return None
    names: list[str] = [
        value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    names += [value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"]
    for name in names:
        with contextlib.suppress(InvalidDeviceConfig):
            return normalize_mac(name)
    return None


class ProvisionTlsServer:
    """`start()` listens; `stop()` closes the listener and open connections."""

    def __init__(
        self, server: ProvisionServer, host: str, port: int, ssl_context: ssl.SSLContext
    ) -> None:
        self.server = server
        self.host = host
        self.requested_port = port
        self.ssl_context = ssl_context
        self._listener: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._listener is not None and self._listener.sockets:
            return int(self._listener.sockets[0].getsockname()[1])
        return self.requested_port

    async def start(self) -> None:
        try:
            self._listener = await asyncio.start_server(
                self._accept, self.host, self.requested_port, ssl=self.ssl_context
            )
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot listen for HTTPS provisioning on {self.host}:{self.requested_port}: "
                f"{exc.strerror}",
            ) from None

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, ssl.SSLError, h11.ProtocolError, TimeoutError):
            pass  # the network gets nothing more; a broken connection is just closed
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADER)
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "-"
        client_mac = mac_of_certificate(writer.get_extra_info("peercert"))

        async def next_event() -> Any:
            while True:
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    return event
                data = await asyncio.wait_for(reader.read(_READ), _IDLE_TIMEOUT)
                conn.receive_data(data)

        while True:
            event = await next_event()
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            facts = _facts(event, source, client_mac)
            if facts is None:
                await _send(writer, conn, 404, b"", None, (), event.method == b"HEAD")
            else:

                async def read_body(limit: int) -> bytes | None:
                    body = bytearray()
                    while True:
                        ev = await next_event()
                        if isinstance(ev, h11.Data):
                            body += ev.data
                            if len(body) > limit:
                                return None
                        elif isinstance(ev, h11.EndOfMessage):
                            return bytes(body)
                        else:
                            return None

                decision = await self.server.handle(facts, read_body)
                await _send(
                    writer,
                    conn,
                    decision.status,
                    decision.body,
                    decision.content_type,
                    decision.headers,
                    facts.method == "HEAD",
                )
            # Drain an unread request body so the next request on the connection parses.
            while conn.their_state is h11.SEND_BODY:
                if isinstance(await next_event(), h11.ConnectionClosed):
                    return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return


def _facts(event: h11.Request, source: str, client_mac: str | None) -> ProvisionRequest | None:
    target = event.target.decode("latin-1")
    path = target.split("?", 1)[0]
    if not path.startswith(PREFIX):
        return None
    headers: dict[bytes, bytes] = {}
    for name, value in event.headers:
        headers.setdefault(name, value)
    length = headers.get(b"content-length")
    return ProvisionRequest(
        method=event.method.decode("latin-1"),
        name=unquote(path[len(PREFIX) :]),
        target=target,
        source=source,
        user_agent=_text(headers.get(b"user-agent")),
        authorization=_text(headers.get(b"authorization")),
        content_length=int(length) if length is not None and length.isdigit() else None,
        client_mac=client_mac,
    )


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


async def _send(
    writer: asyncio.StreamWriter,
    conn: h11.Connection,
    status: int,
    body: bytes,
    content_type: str | None,
    extra: tuple[tuple[str, str], ...],
    head: bool,
) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    headers += [(name.lower().encode(), value.encode("latin-1")) for name, value in extra]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    if not head and body:
        data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    writer.write(data)
    await writer.drain()
