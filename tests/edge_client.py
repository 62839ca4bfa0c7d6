"""A minimal SIP client for tests against the running edge: register with digest, wait,
listen for silence, read the metrics text."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from edge_server import DOMAIN, EDGE_HOST, USERS, EdgeServer
from spitguard.sip import Request, parse
from spitguard.sip.auth import format_credentials
from spitguard.sip.digest import DigestClient


def wait_for(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def silent(sock: socket.socket, seconds: float) -> bool:
    """True when nothing at all arrives on `sock` for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.recvfrom(65535)
            return False
        except TimeoutError:
            continue
    return True


def register(
    sock: socket.socket,
    edge: EdgeServer,
    user: str,
    first_cseq: int = 1,
    *,
    password: str | None = None,
    domain: str = DOMAIN,
    contact_host: str = "",
    expires: int = 300,
) -> None:
    """A minimal phone on `sock`: REGISTER, answer the 401 with digest, expect 200.
    The password defaults to the harness's for `user`."""
    ip, port = sock.getsockname()
    client = DigestClient(user, USERS[user] if password is None else password)
    auth: str | None = None
    for cseq in range(first_cseq, first_cseq + 3):
        lines = [
            f"REGISTER sip:{domain} SIP/2.0",
            f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK{user}{cseq}{time.monotonic_ns()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{user}@{domain}>;tag=t{user}",
            f"To: <sip:{user}@{domain}>",
            f"Call-ID: reg-{user}-{port}",
            f"CSeq: {cseq} REGISTER",
            f"Contact: <sip:{user}@{contact_host or ip}:{port}>",
            f"Expires: {expires}",
            "User-Agent: PolycomVVX-VVX_450-UA/6.4.3.5018",
        ]
        if auth is not None:
            lines.append(f"Authorization: {auth}")
        data = ("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n").encode()
        sock.sendto(data, (EDGE_HOST, edge.udp_port))
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline, "no answer to REGISTER"
            try:
                resp = parse(sock.recvfrom(65535)[0])
            except TimeoutError:
                continue
            if not isinstance(resp, Request) and resp.cseq.number == cseq:
                break
        if resp.status == 200:  # type: ignore[union-attr]
            return
        assert resp.status == 401  # type: ignore[union-attr]
        challenge = resp.www_authenticate[0]
        auth = format_credentials(
            client.authorize(challenge, method="REGISTER", uri=f"sip:{domain}")
        )
    raise AssertionError("could not register")


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
