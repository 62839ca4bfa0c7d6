"""Actions: re-sync devices, allow or forbid a tenant's phone web UI, unban a source."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, Field

from ...store.repos import MAX_SOURCE
from ..actions import MAX_RESYNC_MACS, resync, resync_targets
from ..auth import Auth, OperatorAuth, ctx_of, tenant_in_scope
from ..errors import not_found
from .schemas import ResyncOut, WebUiOut

router = APIRouter(tags=["actions"])


class ResyncIn(BaseModel):
    macs: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=list, max_length=MAX_RESYNC_MACS, description="these devices"
    )
    tenant: str | None = Field(default=None, max_length=64, description="this tenant's devices")
    stale: bool = Field(
        default=False,
        description="only devices not running their current configuration (stale, never, "
        "invalid), as `spitguard device resync --stale`",
    )


@router.post("/actions/resync", response_model=ResyncOut)
async def resync_devices(
    request: Request, me: Auth, body: Annotated[ResyncIn, Body()]
) -> ResyncOut:
    """Push a re-sync (SIP NOTIFY check-sync) to devices: the listed ones, a tenant's, or
    every stale one (of a tenant when given), at most 1000 at once (422 beyond). Answers
    once every phone answered, or after 5 seconds ("timeout" for the silent ones); a phone
    that accepted fetches its configuration at once. 503 when the server runs no edge."""
    ctx = ctx_of(request)
    tenant_id = await tenant_in_scope(request, me, body.tenant)
    macs = await resync_targets(ctx, me, macs=body.macs, tenant_id=tenant_id, stale=body.stale)
    result = await resync(ctx, macs)
    return ResyncOut(devices=result.devices, outcomes=result.outcomes, summary=result.summary)


class WebUiIn(BaseModel):
    allowed: bool


@router.post("/tenants/{name}/web-ui", response_model=WebUiOut)
async def set_web_ui(
    request: Request,
    me: Auth,
    name: Annotated[str, Path(max_length=64)],
    body: Annotated[WebUiIn, Body()],
) -> WebUiOut:
    """Allow (or forbid again) the phones' own web interface for one tenant."""
    await tenant_in_scope(request, me, name)
    profile = await ctx_of(request).store.profiles.allow_web_ui(name, body.allowed)
    return WebUiOut(tenant=profile.tenant, web_ui=profile.web_ui)


class UnbanIn(BaseModel):
    source: str = Field(max_length=MAX_SOURCE)


@router.post("/actions/unban", status_code=204, response_model=None)
async def unban(request: Request, me: OperatorAuth, body: Annotated[UnbanIn, Body()]) -> None:
    if not await ctx_of(request).store.bans.remove_manual(body.source):
        raise not_found("ban")
