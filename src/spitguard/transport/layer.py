"""asyncio adapters for SIP over UDP, TCP and TLS: bytes in, flows out, and back.

The layer does no SIP beyond framing streams: every datagram or frame goes to one
receiver callback with the flow it arrived on; the proxy answers through `send(flow)`,
so replies and later requests to a phone use the very socket or connection (and NAT
binding) that the phone's own traffic opened.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from ..sip.framer import PONG, Close, Frame, Ping, Pong, StreamFramer
from ..sip.message import DEFAULT_LIMITS, Limits
from .flow import Flow, Target

log = logging.getLogger(__name__)

Receiver = Callable[[bytes, Flow], None]
SendFailed = Callable[[Target, bytes], None]


@dataclass
class Counters:
    datagrams_in: int = 0
    frames_in: int = 0
    keepalives_in: int = 0
    streams_closed_garbage: int = 0
    send_errors: int = 0
    connections_opened: int = 0
    by_close_reason: dict[str, int] = field(default_factory=dict)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, layer: TransportLayer, host: str, port: int) -> None:
        self.layer = layer
        self.local = (host, port)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's: a cast, not an isinstance check.
        self.transport = cast(asyncio.DatagramTransport, transport)
        host, port = transport.get_extra_info("sockname")[:2]
        self.local = (host, port)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        layer = self.layer
        layer.counters.datagrams_in += 1
        if data in (b"\r\n\r\n", b"\r\n", b"\x00\x00\x00\x00"):
            layer.counters.keepalives_in += 1  # NAT keep-alives carry no SIP
            return
        host, port = self.local
        flow = Flow("udp", host, port, str(addr[0]), int(addr[1]))
        layer.receiver(data, flow)

    def error_received(self, exc: Exception) -> None:
        self.layer.counters.send_errors += 1


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, layer: TransportLayer, transport_name: str) -> None:
        self.layer = layer
        self.name = transport_name
        self.framer = StreamFramer(layer.limits)
        self.transport: asyncio.Transport | None = None
        self.flow: Flow | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        local = transport.get_extra_info("sockname")
        remote = transport.get_extra_info("peername")
        conn_id = next(self.layer._conn_ids)
        self.flow = Flow(self.name, local[0], local[1], remote[0], remote[1], conn_id)
        self.layer._register(self)

    def data_received(self, data: bytes) -> None:
        flow = self.flow
        transport = self.transport
        if flow is None or transport is None:
            return
        layer = self.layer
        for event in self.framer.feed(data):
            if isinstance(event, Frame):
                layer.counters.frames_in += 1
                layer.receiver(event.data, flow)
            elif isinstance(event, Ping):
                layer.counters.keepalives_in += 1
                transport.write(PONG)
            elif isinstance(event, Pong):
                layer.counters.keepalives_in += 1
            elif isinstance(event, Close):
                reasons = layer.counters.by_close_reason
                reasons[event.reason] = reasons.get(event.reason, 0) + 1
                layer.counters.streams_closed_garbage += 1
                transport.abort()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.layer._unregister(self)


class TransportLayer:
    """All listening sockets and connections of one edge process."""

    def __init__(
        self,
        receiver: Receiver,
        *,
        limits: Limits = DEFAULT_LIMITS,
        tls_server: ssl.SSLContext | None = None,
        tls_client: ssl.SSLContext | None = None,
        on_send_failed: SendFailed | None = None,
        udp_buffer_size: int | None = None,
    ) -> None:
        self.receiver = receiver
        self.udp_buffer_size = udp_buffer_size
        self.limits = limits
        self.tls_server = tls_server
        self.tls_client = tls_client
        self.on_send_failed = on_send_failed
        self.counters = Counters()
        self._conn_ids = itertools.count(1)
        self._udp: dict[tuple[str, int], _UdpProtocol] = {}
        self._servers: list[asyncio.Server] = []
        self._conns: dict[int, _StreamProtocol] = {}
        self._by_remote: dict[tuple[str, str, int], int] = {}
        self._connecting: dict[Target, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.listening: list[tuple[str, str, int]] = []  # (transport, host, port)

    # --- listening ----------------------------------------------------------------------
    async def listen(self, transport: str, host: str, port: int) -> tuple[str, int]:
        """Start listening; returns the bound (host, port) (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        if transport == "udp":
            sock = self._udp_socket(host, port)
            try:
                _, proto = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self, host, port), sock=sock
                )
            except BaseException:
                sock.close()
                raise
            bound = proto.local
            self._udp[bound] = proto
        elif transport in ("tcp", "tls"):
            ctx = None
            if transport == "tls":
                if self.tls_server is None:
                    raise ValueError("TLS listener needs a certificate")
                ctx = self.tls_server
            server = await loop.create_server(
                lambda: _StreamProtocol(self, transport), host, port, ssl=ctx, reuse_address=True
            )
            self._servers.append(server)
            bound = server.sockets[0].getsockname()[:2]
        else:
            raise ValueError(f"unknown transport {transport!r}")
        self.listening.append((transport, bound[0], bound[1]))
        return bound[0], bound[1]

    def _udp_socket(self, host: str, port: int) -> socket.socket:
        """A bound, non-blocking UDP socket with the configured buffer sizes."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            size = self.udp_buffer_size
            if size is not None:
                for option, name in ((socket.SO_RCVBUF, "rmem"), (socket.SO_SNDBUF, "wmem")):
                    sock.setsockopt(socket.SOL_SOCKET, option, size)
                    # Linux doubles the value it grants (bookkeeping) and caps the request
                    # at net.core.{r,w}mem_max: say so, or bursts get dropped silently.
                    granted = sock.getsockopt(socket.SOL_SOCKET, option) // 2
                    if granted < size:
                        log.warning(
                            "udp %s:%d: asked for a %d-byte buffer, got %d; raise "
                            "net.core.%s_max to allow more",
                            host,
                            port,
                            size,
                            granted,
                            name,
                        )
            sock.setblocking(False)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def local_address(self, transport: str) -> tuple[str, int] | None:
        for t, host, port in self.listening:
            if t == transport:
                return host, port
        return None

    # --- connections --------------------------------------------------------------------
    def _register(self, proto: _StreamProtocol) -> None:
        flow = proto.flow
        assert flow is not None
        self._conns[flow.conn_id] = proto
        self._by_remote[(flow.transport, flow.remote_host, flow.remote_port)] = flow.conn_id
        self.counters.connections_opened += 1

    def _unregister(self, proto: _StreamProtocol) -> None:
        flow = proto.flow
        if flow is None:
            return
        self._conns.pop(flow.conn_id, None)
        key = (flow.transport, flow.remote_host, flow.remote_port)
        if self._by_remote.get(key) == flow.conn_id:
            del self._by_remote[key]

    def is_alive(self, flow: Flow) -> bool:
        if flow.transport == "udp":
            return (flow.local_host, flow.local_port) in self._udp
        return flow.conn_id in self._conns

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # --- sending ------------------------------------------------------------------------
    def send(self, flow: Flow, data: bytes) -> bool:
        """Send on an existing flow; False when its socket or connection is gone."""
        if flow.transport == "udp":
            proto = self._udp.get((flow.local_host, flow.local_port))
            if proto is None or proto.transport is None:
                self.counters.send_errors += 1
                return False
            proto.transport.sendto(data, (flow.remote_host, flow.remote_port))
            return True
        conn = self._conns.get(flow.conn_id)
        if conn is None or conn.transport is None or conn.transport.is_closing():
            self.counters.send_errors += 1
            return False
        conn.transport.write(data)
        return True

    def flow_for(self, target: Target) -> Flow | None:
        """The flow a send to `target` would use right now, if one exists."""
        if target.transport == "udp":
            want_v6 = ":" in target.host
            for (host, port), _proto in self._udp.items():
                if (":" in host) == want_v6:
                    return Flow("udp", host, port, target.host, target.port)
            return None
        conn_id = self._by_remote.get((target.transport, target.host, target.port))
        conn = self._conns.get(conn_id) if conn_id is not None else None
        return conn.flow if conn is not None else None

    def send_to(self, target: Target, data: bytes) -> bool:
        """Send to an address, opening a TCP/TLS connection in the background if needed.
        False only when it is known at once that it cannot be sent."""
        flow = self.flow_for(target)
        if flow is not None:
            return self.send(flow, data)
        if target.transport == "udp":
            self.counters.send_errors += 1
            return False
        pending = self._connecting.get(target)
        if pending is not None:
            pending.append(data)
            return True
        self._connecting[target] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _connect(self, target: Target) -> None:
        loop = asyncio.get_running_loop()
        ctx = None
        if target.transport == "tls":
            ctx = self.tls_client or ssl.create_default_context()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _StreamProtocol(self, target.transport),
                    target.host,
                    target.port,
                    ssl=ctx,
                ),
                timeout=10.0,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.info("connect to %s failed: %s", target, exc.__class__.__name__)
            for data in self._connecting.pop(target, []):
                self.counters.send_errors += 1
                if self.on_send_failed is not None:
                    self.on_send_failed(target, data)
            return
        for data in self._connecting.pop(target, []):
            if proto.transport is not None:
                proto.transport.write(data)

    def close_flow(self, flow: Flow) -> None:
        conn = self._conns.get(flow.conn_id)
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for proto in list(self._conns.values()):
            if proto.transport is not None:
                proto.transport.abort()
        for udp in self._udp.values():
            if udp.transport is not None:
                udp.transport.close()
        for task in list(self._tasks):
            task.cancel()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._udp.clear()
