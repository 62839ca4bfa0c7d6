"""Portal pages and their actions. Every page is scoped like the API: a tenant admin sees
only their tenant, and guard data (blocked traffic, bans) is for operators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse

from ...proxy.nat import EXPOSED
from ..actions import resync, resync_targets
from ..api.audits import audits_of, start_audit
from ..api.params import MAX_ID, Limit, Offset, Search, TenantName, Time
from ..api.schemas import (
    audit_result_out,
    audit_run_out,
    event_out,
    registration_out,
    trace_text,
)
from ..auth import Auth, OperatorAuth, Principal, authenticate, ctx_of, tenant_in_scope
from ..compliance import desired_files, device_page
from ..errors import not_found
from . import login
from .render import page

router = APIRouter(include_in_schema=False)
router.include_router(login.router)
DAY = 86400.0
PAGE = 50


async def _principal(
    request: Request, who: Annotated[Principal, Depends(authenticate)]
) -> Principal:
    request.state.principal = who  # for the page header
    return who


Me = Annotated[Principal, Depends(_principal)]


def _pager(
    total: int | None, limit: int, offset: int, more: bool | None = None
) -> dict[str, object]:
    has_next = more if more is not None else total is not None and offset + limit < total
    return {
        "total": total,
        "limit": limit,
        "offset": offset,
        "prev": max(0, offset - limit) if offset > 0 else None,
        "next": offset + limit if has_next else None,
    }


@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request, me: Me) -> HTMLResponse:
    ctx = ctx_of(request)
    views = ctx.store.views
    registered, exposed = await views.registration_counts(me.scope)
    # Compliance is measured against the boot server: without one, the card is left out.
    compliance = (
        None
        if ctx.provision is None
        else await views.compliance_counts(me.scope, await desired_files(ctx))
    )
    guard: dict[str, object] = {}
    if me.user.is_operator:
        since = ctx.wall_clock() - DAY
        by_reason = await ctx.store.events.by_reason(since)
        by_hour = await ctx.store.events.by_hour(since)
        guard = {
            "blocked": sum(n for _, n in by_reason),
            "by_reason": by_reason,
            "reason_max": max((n for _, n in by_reason), default=1),
            "by_hour": by_hour,
            "hour_max": max((n for _, n in by_hour), default=1),
            "since": since,
            "top_sources": await ctx.store.events.by_source(since, 10),
        }
    return page(
        request,
        "dashboard.html",
        here="dashboard",
        registered=registered,
        exposed=exposed,
        non_compliant=None
        if compliance is None
        else sum(n for state, n in compliance.items() if state != "compliant"),
        devices=None if compliance is None else sum(compliance.values()),
        guard=guard,
    )


@router.get("/registrations", response_class=HTMLResponse)
async def registrations(
    request: Request,
    me: Me,
    tenant: TenantName = None,
    q: Search = None,
    exposed: Annotated[bool | None, Query()] = None,
    limit: Limit = PAGE,
    offset: Offset = 0,
) -> HTMLResponse:
    tenant_id = await tenant_in_scope(request, me, tenant or None)
    store = ctx_of(request).store
    result = await store.views.registrations(
        me.scope, tenant_id=tenant_id, q=q, exposed=exposed, limit=limit, offset=offset
    )
    # The latest audit of each phone on the page: one query for all of them.
    addresses = [(r.binding.remote_host, r.binding.remote_port) for r in result.items]
    latest = await store.audits.latest_for_hosts(addresses, scope=me.scope)
    return page(
        request,
        "registrations.html",
        here="registrations",
        rows=[registration_out(r) for r in result.items],
        audits={r.id: latest.get(a) for r, a in zip(result.items, addresses, strict=True)},
        can_audit=ctx_of(request).audits is not None,
        pager=_pager(result.total, limit, offset),
        filters={"tenant": tenant or "", "q": q or "", "exposed": exposed},
        exposed_verdict=EXPOSED,
    )


@router.get("/registrations/{registration_id}", response_class=HTMLResponse)
async def registration(request: Request, me: Me, registration_id: int) -> HTMLResponse:
    if not 1 <= registration_id <= MAX_ID:
        raise not_found("registration")
    store = ctx_of(request).store
    found = await store.views.registration(me.scope, registration_id)
    if found is None:
        raise not_found("registration")
    address = (found.binding.remote_host, found.binding.remote_port)
    latest = await store.audits.latest_for_hosts([address], scope=me.scope)
    return page(
        request,
        "registration.html",
        here="registrations",
        r=registration_out(found),
        audit=latest.get(address),
    )


@router.get("/devices", response_class=HTMLResponse)
async def devices(
    request: Request,
    me: Me,
    tenant: TenantName = None,
    q: Search = None,
    compliant: Annotated[bool | None, Query()] = None,
    limit: Limit = PAGE,
    offset: Offset = 0,
) -> HTMLResponse:
    tenant_id = await tenant_in_scope(request, me, tenant or None)
    ctx = ctx_of(request)
    result = await device_page(
        ctx, me.scope, tenant_id=tenant_id, q=q, compliant=compliant, limit=limit, offset=offset
    )
    # The web UI switch is per tenant: shown for the tenant in view.
    in_view = me.user.tenant if not me.user.is_operator else (tenant or None)
    profile = None if in_view is None else await ctx.store.profiles.get(in_view)
    # The latest audit of each device on the page: one query for all of them.
    latest = await ctx.store.audits.latest_for_devices(
        [d.mac for d in result.items], scope=me.scope
    )
    return page(
        request,
        "devices.html",
        here="devices",
        profile=profile,
        rows=result.items,
        audits=latest,
        pager=_pager(result.total, limit, offset),
        filters={"tenant": tenant or "", "q": q or "", "compliant": compliant},
    )


@router.post("/devices/resync", response_class=HTMLResponse)
async def resync_action(
    request: Request,
    me: Auth,
    mac: Annotated[str, Form(max_length=32)] = "",
    tenant: Annotated[str, Form(max_length=64)] = "",
    stale: Annotated[bool, Form()] = False,
) -> HTMLResponse:
    ctx = ctx_of(request)
    tenant_id = await tenant_in_scope(request, me, tenant or None)
    macs = await resync_targets(
        ctx, me, macs=[mac] if mac else [], tenant_id=tenant_id, stale=stale
    )
    result = await resync(ctx, macs)
    return page(request, "flash.html", message=result.text, error=False)


@router.get("/events", response_class=HTMLResponse)
async def events(
    request: Request,
    me: Me,
    _: OperatorAuth,
    since: Time = None,
    until: Time = None,
    reason: Annotated[str | None, Query(max_length=64)] = None,
    source: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = PAGE,
    offset: Offset = 0,
) -> HTMLResponse:
    rows = await ctx_of(request).store.events.query(
        since=since,
        until=until,
        reason=reason or None,
        source=source or None,
        limit=limit + 1,
        offset=offset,
    )
    return page(
        request,
        "events.html",
        here="events",
        rows=[event_out(e) for e in rows[:limit]],
        pager=_pager(None, limit, offset, more=len(rows) > limit),
        filters={"reason": reason or "", "source": source or ""},
    )


@router.get("/events/{event_id}", response_class=HTMLResponse)
async def event(request: Request, me: Me, _: OperatorAuth, event_id: int) -> HTMLResponse:
    found = await ctx_of(request).store.events.get(event_id) if 1 <= event_id <= MAX_ID else None
    if found is None:
        raise not_found("event")
    return page(request, "event.html", here="events", e=event_out(found), trace=trace_text(found))


@router.get("/bans", response_class=HTMLResponse)
async def bans(request: Request, me: Me, _: OperatorAuth) -> HTMLResponse:
    ctx = ctx_of(request)
    return page(
        request,
        "bans.html",
        here="bans",
        rows=await ctx.store.bans.list(ctx.wall_clock()),
        now=ctx.wall_clock(),
    )


@router.post("/bans/unban", response_class=HTMLResponse)
async def unban_action(
    request: Request, me: OperatorAuth, source: Annotated[str, Form(max_length=64)]
) -> HTMLResponse:
    if not await ctx_of(request).store.bans.remove_manual(source):
        raise not_found("ban")
    return page(request, "flash.html", message=f"{source} unbanned", error=False)


@router.post("/tenants/{name}/web-ui", response_class=HTMLResponse)
async def web_ui_action(
    request: Request, me: Auth, name: str, allowed: Annotated[bool, Form()]
) -> HTMLResponse:
    await tenant_in_scope(request, me, name[:64])
    profile = await ctx_of(request).store.profiles.allow_web_ui(name, allowed)
    state = "allowed" if profile.web_ui else "forbidden"
    return page(
        request, "flash.html", message=f"phone web UI {state} for {profile.tenant}", error=False
    )


@router.get("/audits", response_class=HTMLResponse)
async def audits(request: Request, me: Me, limit: Limit = PAGE, offset: Offset = 0) -> HTMLResponse:
    running = audits_of(request).running  # before reading: a run stored as done stays done
    runs = await ctx_of(request).store.audits.runs(limit + 1, scope=me.scope, offset=offset)
    return page(
        request,
        "audits.html",
        here="audits",
        rows=[audit_run_out(r, running) for r in runs[:limit]],
        pager=_pager(None, limit, offset, more=len(runs) > limit),
        filters={},
    )


@router.get("/audits/{audit_id}", response_class=HTMLResponse)
async def audit(request: Request, me: Me, audit_id: int) -> HTMLResponse:
    running = audits_of(request).running  # before reading: a run stored as done stays done
    store = ctx_of(request).store
    run = await store.audits.run(audit_id, scope=me.scope) if 1 <= audit_id <= MAX_ID else None
    if run is None:
        raise not_found("audit")
    results = await store.audits.results(audit_id, scope=me.scope)
    return page(
        request,
        "audit.html",
        here="audits",
        run=audit_run_out(run, running),
        results=[audit_result_out(r) for r in results],
    )


@router.post("/audits/start", response_class=HTMLResponse)
async def start_audit_action(
    request: Request,
    me: Auth,
    tenant: Annotated[str, Form(max_length=64)] = "",
    invite: Annotated[bool, Form()] = True,
) -> HTMLResponse:
    run = await start_audit(request, me, invite=invite, tenant=tenant or None)
    whose = f"of {run.tenant}" if run.tenant else "of every tenant"
    return page(
        request,
        "flash.html",
        message=f"Audit {run.id} started: the registered phones {whose} are being probed.",
        error=False,
        link=f"/audits/{run.id}",
    )
