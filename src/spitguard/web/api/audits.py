"""Audits of the registered phones: start one (in the background), list runs, read results.

Only the public addresses of live registrations are probed, never a host named in the
request, so the API cannot be used to make the server probe the Internet (docs/audit.md).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, Field

from ...audit import AuditBusyError, AuditService, TargetError
from ..auth import Auth, Principal, ctx_of, tenant_in_scope
from ..errors import ApiError, not_found
from .params import MAX_ID, Limit, Offset
from .schemas import (
    AuditRunDetail,
    AuditRunList,
    AuditRunOut,
    ErrorOut,
    audit_result_out,
    audit_run_out,
)

router = APIRouter(tags=["audits"])

AUDITS_UNAVAILABLE = (
    "audits are not available on this server: the edge has not provided the auditor to the "
    "web layer (run `spitguard audit --registrations` instead)"
)


def audits_of(request: Request) -> AuditService:
    service = ctx_of(request).audits
    if service is None:
        raise ApiError(503, AUDITS_UNAVAILABLE)
    return service


class AuditIn(BaseModel):
    invite: bool = Field(
        default=True,
        description="send a scanner-shaped INVITE (CANCELled at once); false: OPTIONS only",
    )
    tenant: str | None = Field(
        default=None,
        max_length=64,
        description="only this tenant's phones (tenant admins: always their own)",
    )


async def start_audit(
    request: Request, me: Principal, *, invite: bool, tenant: str | None
) -> AuditRunOut:
    """Shared by the API and the portal: the caller's scope decides whose phones."""
    service = audits_of(request)
    await tenant_in_scope(request, me, tenant)
    name = tenant if me.user.is_operator else me.user.tenant
    try:
        run = await service.start(tenant=name, invite=invite)
    except AuditBusyError as exc:
        raise ApiError(409, str(exc)) from None
    except TargetError as exc:
        raise ApiError(422, str(exc)) from None
    return audit_run_out(run, service.running)


_START_ERRORS: dict[int | str, dict[str, object]] = {
    409: {"model": ErrorOut, "description": "an audit is already running on this server"},
    503: {"model": ErrorOut, "description": "this server offers no audits"},
}


@router.post("/audits", status_code=202, response_model=AuditRunOut, responses=_START_ERRORS)
async def create_audit(
    request: Request, me: Auth, body: Annotated[AuditIn, Body()] | None = None
) -> AuditRunOut:
    """Start an audit of the registered phones: the public address of every live
    registration (of one tenant when given; a tenant admin's always of their own tenant),
    probed the way a scanner would. Never any other host. Answers at once with the run
    (`state` "running"); poll `GET /audits/{audit_id}` until it is "done". One audit at a
    time per server: 409 while one runs."""
    given = body or AuditIn()
    return await start_audit(request, me, invite=given.invite, tenant=given.tenant)


@router.get("/audits", response_model=AuditRunList, responses={503: _START_ERRORS[503]})
async def list_audits(
    request: Request, me: Auth, limit: Limit = 20, offset: Offset = 0
) -> AuditRunList:
    """Audit runs, newest first. Tenant admins see the runs of their tenant (started for
    it, by the API, the portal or `spitguard audit --registrations --tenant`)."""
    running = audits_of(request).running  # before reading: a run stored as done stays done
    runs = await ctx_of(request).store.audits.runs(limit, scope=me.scope, offset=offset)
    return AuditRunList(items=[audit_run_out(r, running) for r in runs], limit=limit, offset=offset)


@router.get(
    "/audits/{audit_id}", response_model=AuditRunDetail, responses={503: _START_ERRORS[503]}
)
async def get_audit(
    request: Request, me: Auth, audit_id: Annotated[int, Path(ge=1, le=MAX_ID)]
) -> AuditRunDetail:
    """One run and its results (per registered phone: verdict, web UI, configuration)."""
    running = audits_of(request).running  # before reading: a run stored as done stays done
    store = ctx_of(request).store
    run = await store.audits.run(audit_id, scope=me.scope)
    if run is None:
        raise not_found("audit")
    results = await store.audits.results(audit_id, scope=me.scope)
    out = audit_run_out(run, running)
    return AuditRunDetail(**out.model_dump(), results=[audit_result_out(r) for r in results])
