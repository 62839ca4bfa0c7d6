"""The asyncio adapter: sockets for the sans-I/O probes, pacing, concurrency, progress.

`run_audit(targets, options)` is the one entry point (CLI and API alike). It contacts only
the targets given: SIP over UDP and TCP to each target's port, HTTP(S) to its web ports.
Host names are resolved once, through the system resolver, before anything is sent.
Sockets are bound to `options.source` when given, so the audit can come from an address
the edge does not trust, as a scanner's would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .. import __version__
from ..sip.framer import Close, Frame, StreamFramer
from ..transport.tls import client_context
from .http_probe import (
    DEFAULT_CONFIG_PATHS,
    DEFAULT_WEB_PORTS,
    MAX_READ,
    TLS_PORTS,
    build_get,
    classify,
    scheme_for,
)
from .pacing import DEFAULT_BURST, DEFAULT_RATE, Pacer
from .results import HttpFinding, TargetResult, TransportResult
from .sip_probe import DEFAULT_USER, Outgoing, SipProbe, Timing, Transport
from .targets import Target

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_USER_AGENT",
    "AuditError",
    "AuditOptions",
    "Progress",
    "run_audit",
]

DEFAULT_USER_AGENT: Final = f"spitguard-audit/{__version__}"
DEFAULT_CONCURRENCY: Final = 16
_MAX_QUEUED: Final = 64  # datagrams waiting for a probe; more is a flood, dropped

Progress = Callable[[int, int], None]  # (targets done, targets in all)


class AuditError(Exception):
    """The audit cannot run as asked (e.g. the source address is not on this host)."""


@dataclass(frozen=True, slots=True)
class AuditOptions:
    transports: tuple[Transport, ...] = ("udp", "tcp")
    invite: bool = True
    web_ports: tuple[int, ...] = DEFAULT_WEB_PORTS
    tls_ports: frozenset[int] = TLS_PORTS  # web ports spoken to over TLS
    config_paths: tuple[str, ...] = DEFAULT_CONFIG_PATHS
    source: str | None = None  # local address to send from
    rate: float = DEFAULT_RATE  # sends per second over the whole audit
    burst: int = DEFAULT_BURST
    timing: Timing = field(default_factory=Timing)
    concurrency: int = DEFAULT_CONCURRENCY  # targets probed at once
    user: str = DEFAULT_USER
    user_agent: str = DEFAULT_USER_AGENT

    def __post_init__(self) -> None:
        if not self.transports and not self.web_ports:
            raise ValueError("nothing to probe: give a SIP transport or a web port")
        if any(t not in ("udp", "tcp") for t in self.transports):
            raise ValueError("transports are udp and tcp")
        if any(not 1 <= p <= 65535 for p in self.web_ports):
            raise ValueError("web ports must be between 1 and 65535")
        if any(not p.startswith("/") or any(c in p for c in " \r\n") for p in self.config_paths):
            raise ValueError("configuration paths start with / and hold no spaces")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not self.user or not self.user.isalnum():
            raise ValueError("the user part must be letters and digits, e.g. 100")
        Pacer(self.rate, self.burst)  # validates both
        if self.source is not None:
            ipaddress.ip_address(self.source)

    def to_json(self) -> dict[str, Any]:
        t = self.timing
        return {
            "transports": list(self.transports),
            "invite": self.invite,
            "web_ports": list(self.web_ports),
            "tls_ports": sorted(self.tls_ports),
            "config_paths": list(self.config_paths),
            "source": self.source,
            "rate": self.rate,
            "burst": self.burst,
            "timing": {"t1": t.t1, "t2": t.t2, "retries": t.retries, "timeout": t.timeout},
            "concurrency": self.concurrency,
        }


class _Gate:
    """The shared pacer, with one waiter at a time so sends leave in order."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()

    async def acquire(self) -> None:
        async with self._lock:
            while (wait := self.pacer.delay(self._loop.time())) > 0:
                await asyncio.sleep(wait)

    def urgent(self) -> None:
        self.pacer.take_now(self._loop.time())


async def run_audit(
    targets: Sequence[Target],
    options: AuditOptions | None = None,
    *,
    progress: Progress | None = None,
    pacer: Pacer | None = None,
) -> list[TargetResult]:
    """Probe every target; the results in the order of `targets`.

    Raises AuditError when the audit cannot start (a source address not on this host).
    """
    opts = options or AuditOptions()
    if opts.source is not None:
        _check_source(opts.source)
    gate = _Gate(pacer or Pacer(opts.rate, opts.burst))
    limit = asyncio.Semaphore(opts.concurrency)
    total, finished = len(targets), 0

    async def one(target: Target) -> TargetResult:
        nonlocal finished
        async with limit:
            result = await _audit_target(target, opts, gate)
        finished += 1
        if progress is not None:
            progress(finished, total)
        return result

    return list(await asyncio.gather(*(one(t) for t in targets)))


def _check_source(source: str) -> None:
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
    except OSError as exc:
        raise AuditError(
            f"cannot send from {source}: {exc.strerror or exc}; give an address of this "
            "host with --source (or leave it out)"
        ) from None


async def _resolve(host: str) -> str:
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    return str(infos[0][4][0])


async def _audit_target(target: Target, opts: AuditOptions, gate: _Gate) -> TargetResult:
    started = time.time()
    try:
        address = await _resolve(target.host)
    except OSError as exc:
        return TargetResult(
            target, None, error=f"cannot resolve {target.host}: {exc}", started_at=started
        )
    if opts.source is not None and (":" in opts.source) != (":" in address):
        return TargetResult(
            target,
            address,
            error=f"--source {opts.source} and {address} are of different IP versions",
            started_at=started,
        )
    sip = [_sip(address, target.port, t, opts, gate) for t in opts.transports]
    web = [_web_port(address, port, opts, gate) for port in opts.web_ports]
    sip_results = await asyncio.gather(*sip)
    web_results = await asyncio.gather(*web)
    findings = tuple(f for port_findings in web_results for f in port_findings)
    return TargetResult(target, address, tuple(sip_results), findings, None, started, time.time())


def _local_ip(address: str, port: int, source: str | None) -> str:
    """The address our packets leave from: for the Via and SDP. Connecting a UDP socket
    sends nothing; it only asks the kernel for the route."""
    if source is not None:
        return source
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((address, port))
        return str(sock.getsockname()[0])


def _local_addr(source: str | None) -> tuple[str, int] | None:
    return None if source is None else (source, 0)


def _probe(
    opts: AuditOptions, transport: Transport, address: str, port: int, local: Any
) -> SipProbe:
    return SipProbe(
        transport=transport,
        target_host=address,
        target_port=port,
        local_host=str(local[0]),
        local_port=int(local[1]),
        invite=opts.invite,
        timing=opts.timing,
        user=opts.user,
        user_agent=opts.user_agent,
    )


async def _drive(
    probe: SipProbe,
    inbox: asyncio.Queue[bytes | None],
    send: Callable[[bytes], None],
    gate: _Gate,
) -> None:
    loop = asyncio.get_running_loop()

    async def emit(out: list[Outgoing]) -> None:
        for item in out:
            if item.urgent:
                gate.urgent()
            else:
                await gate.acquire()
            send(item.data)

    await gate.acquire()
    out = probe.start(loop.time())
    send(out[0].data)
    while not probe.done:
        deadline = probe.next_deadline()
        if deadline is None:
            break  # nothing left to wait for
        try:
            data = await asyncio.wait_for(inbox.get(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            out = probe.on_timer(loop.time())
        else:
            if data is None:
                probe.closed("connection closed by the target")
                break
            out = probe.receive(data, loop.time())
        await emit(out)


class _Datagrams(asyncio.DatagramProtocol):
    """Datagrams from the target's address (any port); everything else is ignored."""

    def __init__(self, peer: str) -> None:
        self.peer = ipaddress.ip_address(peer)
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            same = ipaddress.ip_address(str(addr[0]).split("%", 1)[0]) == self.peer
        except ValueError:
            return
        if same and self.inbox.qsize() < _MAX_QUEUED:
            self.inbox.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable and friends: the target is silent on SIP/UDP


async def _sip(
    address: str, port: int, transport: Transport, opts: AuditOptions, gate: _Gate
) -> TransportResult:
    if transport == "udp":
        return await _sip_udp(address, port, opts, gate)
    return await _sip_tcp(address, port, opts, gate)


async def _sip_udp(address: str, port: int, opts: AuditOptions, gate: _Gate) -> TransportResult:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    bind = opts.source or ("::" if family == socket.AF_INET6 else "0.0.0.0")  # noqa: S104
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Datagrams(address), local_addr=(bind, 0), family=family
    )
    try:
        local = (_local_ip(address, port, opts.source), transport.get_extra_info("sockname")[1])
        probe = _probe(opts, "udp", address, port, local)
        await _drive(probe, proto.inbox, lambda data: transport.sendto(data, (address, port)), gate)
        return probe.result()
    finally:
        transport.close()


def _connect_note(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no connection (timed out)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or 'error'})"
    return f"no connection ({getattr(exc, 'strerror', None) or type(exc).__name__})"


async def _sip_tcp(address: str, port: int, opts: AuditOptions, gate: _Gate) -> TransportResult:
    await gate.acquire()  # the connection attempt is a send too
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, port, local_addr=_local_addr(opts.source)),
            opts.timing.timeout,
        )
    except (OSError, TimeoutError) as exc:
        return TransportResult("tcp", "silent", note=_connect_note(exc))
    inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def read() -> None:
        framer = StreamFramer()
        try:
            while chunk := await reader.read(65536):
                for event in framer.feed(chunk):
                    if isinstance(event, Frame):
                        inbox.put_nowait(event.data)
                    elif isinstance(event, Close):
                        return
        except OSError:
            pass
        finally:
            inbox.put_nowait(None)

    reading = asyncio.create_task(read())
    try:
        probe = _probe(opts, "tcp", address, port, writer.get_extra_info("sockname"))
        await _drive(probe, inbox, writer.write, gate)
        return probe.result()
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _http_get(
    address: str, port: int, path: str, opts: AuditOptions, gate: _Gate
) -> tuple[bytes | None, str | None]:
    """What the target answered to one GET (at most MAX_READ bytes), or None and why."""
    timeout = opts.timing.timeout
    https = scheme_for(port, opts.tls_ports) == "https"
    await gate.acquire()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                address,
                port,
                # Phones serve self-signed certificates; the auditor only looks and sends
                # no credentials, so the certificate is not what is checked here.
                ssl=client_context(verify=False) if https else None,
                server_hostname="" if https else None,
                local_addr=_local_addr(opts.source),
            ),
            timeout,
        )
    except (OSError, TimeoutError) as exc:
        return None, _connect_note(exc)
    data = b""
    try:
        writer.write(build_get(address, port, path, opts.user_agent, https=https))
        async with asyncio.timeout(timeout):
            while len(data) < MAX_READ and (chunk := await reader.read(MAX_READ - len(data))):
                data += chunk
    except (OSError, TimeoutError):
        pass  # keep what arrived: a server that never closes still showed its page
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return data, None


async def _web_port(address: str, port: int, opts: AuditOptions, gate: _Gate) -> list[HttpFinding]:
    scheme = scheme_for(port, opts.tls_ports)
    data, note = await _http_get(address, port, "/", opts, gate)
    findings = [classify(port, "/", data, config_probe=False, note=note, scheme=scheme)]
    if findings[0].status is None:
        return findings  # nothing listens: no point asking for configuration files
    for path in opts.config_paths:
        data, note = await _http_get(address, port, path, opts, gate)
        findings.append(classify(port, path, data, config_probe=True, note=note, scheme=scheme))
    return findings
