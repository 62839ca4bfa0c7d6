"""The web checks, sans-I/O: the GET request to send, and what an answer reveals.

Two questions per web port: does a web UI answer (a login page, or any page served
without authentication), and does a provisioning path hand out a configuration without
authentication. The adapter sends `build_get(...)` and feeds back at most `MAX_READ`
bytes; `classify` reads the status line, a few headers and the start of the body.

A configuration body is recognised by vendor markers (Polycom's XML attributes, Yealink's
``#!version`` header, common ``account.N.`` / ``reg.N.`` keys) and never kept: only its
size and the markers that matched are reported, since it may hold SIP passwords.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .results import HttpFinding, HttpKind
from .targets import uri_host

__all__ = [
    "DEFAULT_CONFIG_PATHS",
    "DEFAULT_WEB_PORTS",
    "MAX_READ",
    "TLS_PORTS",
    "HttpAnswer",
    "build_get",
    "classify",
    "parse_answer",
    "scheme_for",
]

DEFAULT_WEB_PORTS: Final = (80, 443, 8080)
TLS_PORTS: Final = frozenset({443, 8443})  # the ports spoken to over TLS
# The generic master files Polycom phones fetch (phones.md §1.3), at the root and under
# /provision/ where spitguard's own boot server (and many others) serve them.
DEFAULT_CONFIG_PATHS: Final = ("/000000000000.cfg", "/provision/000000000000.cfg")
MAX_READ: Final = 64 * 1024

_LOGIN_MARKERS: Final = (
    ("password-field", re.compile(rb"<input[^>]+type\s*=\s*[\"']?password", re.I)),
    ("login-title", re.compile(rb"<title>[^<]*(log ?in|sign ?in|web configuration)", re.I)),
)
MASTER_ONLY: Final = "polycom-config-files"
_CONFIG_MARKERS: Final = (
    (MASTER_ONLY, re.compile(rb"CONFIG_FILES\s*=")),
    ("polycom-voipprot", re.compile(rb"\bvoIpProt\.[A-Za-z]")),
    ("polycom-reg", re.compile(rb"\breg\.\d+\.(address|auth)")),
    ("yealink-version", re.compile(rb"^#!version:", re.M)),
    ("account-keys", re.compile(rb"^\s*account\.\d+\.[a-z_.]+\s*=", re.M)),
    ("sip-password-key", re.compile(rb"(auth\.password|sip_?password|P34)\s*=", re.I)),
)


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes  # what was read of it (at most MAX_READ bytes in all)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for n, v in self.headers if n.lower() == wanted), None)


def scheme_for(port: int, tls_ports: frozenset[int] = TLS_PORTS) -> str:
    return "https" if port in tls_ports else "http"


def build_get(host: str, port: int, path: str, user_agent: str, *, https: bool = False) -> bytes:
    """One GET without credentials; the connection closes after the answer."""
    default = 443 if https else 80
    host_header = uri_host(host) + ("" if port == default else f":{port}")
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host_header}",
        f"User-Agent: {user_agent}",
        "Accept: */*",
        "Connection: close",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def parse_answer(data: bytes) -> HttpAnswer | None:
    """The status, headers and body start of an HTTP/1.x answer; None if it is not one."""
    end = data.find(b"\r\n\r\n")
    head, body = (data, b"") if end < 0 else (data[:end], data[end + 4 :])
    text = head.decode("iso-8859-1")
    status_line, *lines = text.split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not (code.isdigit() and len(code) == 3):
        return None
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(":")
        if colon:
            headers.append((name.strip(), value.strip()))
    if "chunked" in ({n.lower(): v for n, v in headers}.get("transfer-encoding") or ""):
        body = _dechunk(body)
    return HttpAnswer(int(code), tuple(headers), body)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    rest = body
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        except ValueError:
            break
        if not sep or size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)


def classify(
    port: int,
    path: str,
    data: bytes | None,
    *,
    config_probe: bool,
    note: str | None = None,
    scheme: str = "http",
) -> HttpFinding:
    """What one GET found. `data` None: no connection (`note` says why)."""
    if data is None:
        return HttpFinding(port, scheme, path, None, "none", note=note)
    answer = parse_answer(data)
    if answer is None:
        note = "not an HTTP answer" if data else "connection closed without an answer"
        return HttpFinding(port, scheme, path, None, "none", note=note)
    server = answer.header("server")
    server = server[:120] if server is not None else None
    status = answer.status
    kind: HttpKind = "other"
    markers: tuple[str, ...] = ()
    if config_probe:
        if 200 <= status < 300:
            markers = tuple(name for name, rx in _CONFIG_MARKERS if rx.search(answer.body))
            # A master file that only lists CONFIG_FILES is how every phone bootstraps
            # (spitguard's boot server serves it to anyone by design): it names files but
            # sets nothing. A configuration sets parameters.
            kind = "config" if set(markers) - {MASTER_ONLY} else "other"
    elif status in (401, 407) or (
        200 <= status < 300
        and (markers := tuple(n for n, rx in _LOGIN_MARKERS if rx.search(answer.body)))
    ):
        kind = "login"
        if status in (401, 407):
            markers = ("auth-challenge",)
    elif 200 <= status < 300:
        kind = "page"  # a page served to anyone, login or not: still a web UI
    return HttpFinding(port, scheme, path, status, kind, server, len(answer.body), markers)
