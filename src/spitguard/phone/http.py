"""A tiny HTTP/1.1 GET client over asyncio streams, with RFC 7616 digest, for provisioning.

One connection per request (``Connection: close``), bounded in time and size. A 401 with
a Digest challenge is answered once with the given credentials, through
``spitguard.sip.digest.DigestClient`` (HTTP and SIP digest share the arithmetic: method
``GET``, ``uri`` = the request target). Only ``http://`` is supported.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

from spitguard.sip.auth import format_credentials, parse_challenge
from spitguard.sip.digest import DigestClient, select_challenge
from spitguard.sip.errors import SipParseError

__all__ = ["HttpError", "HttpResponse", "http_get"]

MAX_HEAD_BYTES: Final = 16 * 1024
DEFAULT_MAX_BODY: Final = 1024 * 1024


class HttpError(OSError):
    """The server could not be reached, or answered something that is not HTTP/1.x."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)
    authenticated: bool = False  # the request that got this answer carried credentials

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for n, v in self.headers if n.lower() == wanted), None)

    def header_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [v for n, v in self.headers if n.lower() == wanted]


async def http_get(
    url: str,
    *,
    user_agent: str,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 5.0,
    max_body: int = DEFAULT_MAX_BODY,
) -> HttpResponse:
    """GET ``url``; on a Digest 401, retry once with credentials (URL userinfo wins)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise HttpError(f"only http:// URLs are supported, not {url!r}")
    if parts.username is not None:
        username, password = unquote(parts.username), unquote(parts.password or "")
    host, port = parts.hostname, parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header += f":{parts.port}"
    headers = [("Host", host_header), ("User-Agent", user_agent), ("Accept", "*/*")]

    async def once(extra: list[tuple[str, str]]) -> HttpResponse:
        return await asyncio.wait_for(
            _exchange(host, port, target, [*headers, *extra], max_body), timeout
        )

    try:
        first = await once([])
        if first.status != 401 or username is None:
            return first
        challenges = []
        for value in first.header_all("WWW-Authenticate"):
            with contextlib.suppress(SipParseError):
                challenges.append(parse_challenge(value))
        challenge = select_challenge(challenges)
        if challenge is None:
            return first
        credentials = DigestClient(username, password or "").authorize(
            challenge, method="GET", uri=target
        )
        second = await once([("Authorization", format_credentials(credentials))])
    except TimeoutError as exc:
        raise HttpError(f"GET {url} timed out after {timeout:g} s") from exc
    return HttpResponse(second.status, second.headers, second.body, authenticated=True)


async def _exchange(
    host: str, port: int, target: str, headers: list[tuple[str, str]], max_body: int
) -> HttpResponse:
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD_BYTES)
    except OSError as exc:
        raise HttpError(f"cannot connect to {host}:{port}: {exc}") from exc
    try:
        lines = [f"GET {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers)]
        lines += ["Connection: close", "", ""]
        writer.write("\r\n".join(lines).encode("utf-8"))
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise HttpError("no complete HTTP response head") from exc
        status, fields = _parse_head(head)
        body = await _read_body(reader, fields, max_body)
        return HttpResponse(status, fields, body)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, tuple[tuple[str, str], ...]]:
    text = head.decode("iso-8859-1")
    status_line, *rest = text.split("\r\n")
    version, _, remainder = status_line.partition(" ")
    code = remainder[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise HttpError(f"not an HTTP/1.x response: {status_line[:80]!r}")
    fields: list[tuple[str, str]] = []
    for line in rest:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise HttpError(f"bad HTTP header line: {line[:80]!r}")
        fields.append((name.strip(), value.strip()))
    return int(code), tuple(fields)


async def _read_body(
    reader: asyncio.StreamReader, fields: tuple[tuple[str, str], ...], max_body: int
) -> bytes:
    lookup = {n.lower(): v for n, v in fields}
    if "chunked" in lookup.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, max_body)
    length = lookup.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > max_body:
            raise HttpError(f"unusable Content-Length {length[:20]!r} (limit {max_body})")
        try:
            return await reader.readexactly(int(length))
        except asyncio.IncompleteReadError as exc:
            raise HttpError("body shorter than its Content-Length") from exc
    body = await reader.read(max_body + 1)
    while len(body) <= max_body:
        more = await reader.read(max_body + 1 - len(body))
        if not more:
            return body
        body += more
    raise HttpError(f"body larger than {max_body} bytes")


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    body = bytearray()
    try:
        while True:
            size_line = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
            size = int(size_line, 16)
            if size == 0:
                await _skip_trailers(reader)
                return bytes(body)
            if len(body) + size > max_body:
                raise HttpError(f"body larger than {max_body} bytes")
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise HttpError("malformed chunked body") from exc


async def _skip_trailers(reader: asyncio.StreamReader) -> None:
    while (await reader.readuntil(b"\r\n")) != b"\r\n":
        pass
