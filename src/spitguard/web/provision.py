"""`/provision/<file>`: the phones' boot server, a thin adapter over `ProvisionServer`.

Everything protocol-shaped (authentication, which file, sweeps, uploads) is decided in
`provision.service`; this module only turns ASGI requests into request facts and
decisions into responses. It is plain ASGI middleware in front of the FastAPI app rather
than a FastAPI route: a fleet re-provisioning sends three requests per phone, and the
routing, dependency solving and response classes would cost more than the decision.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..provision.runtime import ProvisionServer
from ..provision.service import ProvisionRequest

PREFIX = "/provision/"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ProvisionMiddleware:
    """Answers `/provision/…` itself; everything else goes to the wrapped app."""

    def __init__(self, app: ASGIApp, server: ProvisionServer | None) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        server = self.server
        if server is None:
            await _respond(send, 404, b"", None, ())
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)  # the first of a repeated header counts
        # The request target as sent (digest's uri): percent-escapes as the phone wrote them.
        target: bytes = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        client = scope.get("client")
        length = headers.get(b"content-length")
        facts = ProvisionRequest(
            method=scope["method"],
            name=scope["path"][len(PREFIX) :],
            target=target.decode("latin-1"),
            source=str(client[0]) if client else "-",
            user_agent=_text(headers.get(b"user-agent")),
            authorization=_text(headers.get(b"authorization")),
            content_length=int(length) if length is not None and length.isdigit() else None,
        )

        async def read_body(limit: int) -> bytes | None:
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None  # the client went away
                body += message.get("body", b"")
                if len(body) > limit:
                    return None
                if not message.get("more_body", False):
                    return bytes(body)

        decision = await server.handle(facts, read_body)
        await _respond(
            send, decision.status, decision.body, decision.content_type, decision.headers
        )


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str | None,
    extra: tuple[tuple[str, str], ...],
) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    headers += [(name.lower().encode(), value.encode("latin-1")) for name, value in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
