"""`/provision/<file>`: the phones' boot server, a thin adapter over `ProvisionServer`.

Everything protocol-shaped (authentication, which file, sweeps, uploads) is decided in
`provision.service`; this module only turns Starlette requests into request facts and
decisions into responses.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..provision.runtime import ProvisionServer
from ..provision.service import ProvisionRequest

PREFIX = "/provision/"

router = APIRouter()


async def _read_limited(request: Request, limit: int) -> bytes | None:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


@router.api_route(
    PREFIX + "{name:path}",
    methods=["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"],
    include_in_schema=False,
)
async def provision(request: Request, name: str) -> Response:
    server: ProvisionServer | None = request.app.state.ctx.provision
    if server is None:
        return Response(status_code=404)
    client = request.client
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    facts = ProvisionRequest(
        method=request.method,
        name=name,
        # The raw target as sent (digest's uri): percent-escapes as the phone wrote them.
        target=request.scope.get("raw_path", target.encode()).decode("latin-1") or target,
        source=client.host if client is not None else "-",
        user_agent=request.headers.get("user-agent"),
        authorization=request.headers.get("authorization"),
        content_length=_content_length(request),
    )

    async def read_body(limit: int) -> bytes | None:
        return await _read_limited(request, limit)

    decision = await server.handle(facts, read_body)
    response = Response(
        content=decision.body, status_code=decision.status, media_type=decision.content_type
    )
    for key, value in decision.headers:
        response.headers.append(key, value)
    return response
