"""The phone's web configuration utility, reduced to its login: enough for an auditor to see
that the web UI answers, and whether the admin password is still the factory default.

``GET /`` shows a login page; a request with ``Authorization: Basic`` for user
``Polycom`` and the admin password is let in (200), a wrong one gets 401. With
``httpd.cfg.enabled="0"`` the server answers 404 to everything.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
from collections.abc import Callable
from typing import Final

from .config import PhoneSettings

__all__ = ["WebUI"]

ADMIN_USER: Final = "Polycom"
_LOGIN_PAGE: Final = (
    b"<!DOCTYPE html><html><head><title>Polycom - Web Configuration Utility</title></head>"
    b'<body><form method="post" action="/form-submit/auth.htm">'
    b'<input name="password" type="password"><button>Submit</button></form></body></html>'
)
_HOME_PAGE: Final = b"<!DOCTYPE html><html><body>Polycom home: signed in as Admin</body></html>"


class WebUI:
    """A tiny HTTP server on ``host:port``; reads the phone's settings at every request."""

    def __init__(self, host: str, port: int, settings: Callable[[], PhoneSettings | None]) -> None:
        self.host = host
        self.port = port
        self._settings = settings
        self._server: asyncio.Server | None = None
        self.requests = 0

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
            self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            status, body, extra = self._answer(head.decode("iso-8859-1"))
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            status, body, extra = 400, b"", []
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}[status]
        lines = [f"HTTP/1.1 {status} {reason}", "Server: Polycom SoundPoint IP Telephone HTTPd"]
        lines += [*extra, "Content-Type: text/html", f"Content-Length: {len(body)}"]
        lines += ["Connection: close", "", ""]
        with contextlib.suppress(OSError):
            writer.write("\r\n".join(lines).encode("ascii") + body)
            await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    def _answer(self, head: str) -> tuple[int, bytes, list[str]]:
        settings = self._settings()
        if settings is None or not settings.web_ui_enabled:
            return 404, b"", []
        request_line, *fields = head.split("\r\n")
        path = request_line.split(" ")[1] if request_line.count(" ") >= 2 else "/"
        auth = next(
            (v.strip() for n, _, v in (f.partition(":") for f in fields)
             if n.strip().lower() == "authorization"),
            None,
        )  # fmt: skip
        challenge = ['WWW-Authenticate: Basic realm="PLCM_SPIP"']
        if auth is None:
            return (200, _LOGIN_PAGE, []) if path in ("/", "/login.htm") else (401, b"", challenge)
        scheme, _, token = auth.partition(" ")
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return 401, b"", challenge
        right = hmac.compare_digest(
            password.encode("utf-8"), settings.admin_password.encode("utf-8")
        )
        if scheme.lower() == "basic" and user == ADMIN_USER and right:
            return 200, _HOME_PAGE, []
        return 401, b"", challenge
