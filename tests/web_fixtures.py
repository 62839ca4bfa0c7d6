"""A running edge populated for the portal/API tests: two tenants (acme from the harness,
beta added here), a device each, a registered phone each, a blocked scanner, admin users
of every role with API tokens; plus HTTP helpers (log in, CSRF)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from corpus import read
from edge_client import register as edge_register
from edge_server import DOMAIN, EDGE_HOST, EdgeServer, running_edge

OTHER_DOMAIN = "beta.test"
OTHER_USER, OTHER_PASSWORD = "bert", "bert-secret-4444"
ACME_MAC, BETA_MAC = "0004f2000a01", "0004f2000b01"
PASSWORDS = {
    "op": "operator-pass-123",
    "acme-admin": "acme-admin-pass-1",
    "beta-admin": "beta-admin-pass-1",
}
SCANNER_IP = "127.0.66.7"


@dataclass
class PortalEdge:
    edge: EdgeServer
    base: str
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, *, token_of: str | None = None, local_ip: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[token_of]}"} if token_of else {}
        transport = httpx.HTTPTransport(local_address=local_ip) if local_ip else None
        return httpx.Client(base_url=self.base, headers=headers, transport=transport, timeout=20)


def portal_url(edge: EdgeServer) -> str:
    found = re.search(r"portal:\s+(http://\S+?)/?\n", edge.banner)
    assert found, edge.banner
    return found.group(1)


def cli_ok(edge: EdgeServer, *args: str, input: str | None = None) -> str:
    r = edge.cli(*args, input=input)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def register(
    edge: EdgeServer, ip: str, user: str, password: str, domain: str, *, contact_host: str = ""
) -> socket.socket:
    """A minimal UDP phone at `ip`, registered through the edge. Returns the socket
    (close it to let the phone go)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 0))
    sock.settimeout(0.2)
    edge_register(
        sock, edge, user, password=password, domain=domain, contact_host=contact_host, expires=600
    )
    return sock


def send_scanner_packet(edge: EdgeServer, ip: str = SCANNER_IP) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        s.sendto(read("scanners", "svmap_v03_options.sip"), (EDGE_HOST, edge.udp_port))


def login(client: httpx.Client, user: str, password: str) -> httpx.Response:
    """Submit the portal's login form (with its login CSRF token)."""
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text
    return client.post(
        "/login",
        data={"username": user, "password": password, "csrf_token": token.group(1)},
    )


def session_csrf(client: httpx.Client) -> str:
    page = client.get("/")
    found = re.search(r'X-CSRF-Token": "([0-9a-f]+)"', page.text)
    assert found, page.text
    return found.group(1)


@contextmanager
def portal_edge(tmp: Path, *, extra: str = "") -> Iterator[PortalEdge]:
    with running_edge(tmp, extra=extra) as edge:
        cli_ok(edge, "tenant", "add", "beta", "--domain", OTHER_DOMAIN)
        cli_ok(
            edge,
            "line",
            "add",
            f"{OTHER_USER}@{OTHER_DOMAIN}",
            "--tenant",
            "beta",
            "--password",
            OTHER_PASSWORD,
        )
        cli_ok(edge, "device", "add", ACME_MAC, "--tenant", "acme", "--line", f"1=alice@{DOMAIN}")
        cli_ok(
            edge,
            "device",
            "add",
            BETA_MAC,
            "--tenant",
            "beta",
            "--line",
            f"1={OTHER_USER}@{OTHER_DOMAIN}",
        )
        cli_ok(edge, "admin", "add", "op", "--password-stdin", input=PASSWORDS["op"] + "\n")
        for tenant in ("acme", "beta"):
            user = f"{tenant}-admin"
            cli_ok(
                edge,
                "admin",
                "add",
                user,
                "--role",
                "tenant_admin",
                "--tenant",
                tenant,
                "--password-stdin",
                input=PASSWORDS[user] + "\n",
            )
        pe = PortalEdge(edge, portal_url(edge))
        for user in PASSWORDS:
            pe.tokens[user] = cli_ok(edge, "admin", "token", "create", user, "--name", "t").strip()
        yield pe
