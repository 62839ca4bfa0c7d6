"""Tenants, lines (never their passwords), devices with compliance, the fetch log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from ...store.repos import Compliance, normalize_mac_or_none
from ..auth import Auth, ctx_of, tenant_in_scope
from ..compliance import desired_files, device_page, problem_of
from ..errors import not_found
from .params import Limit, Offset, Search, TenantName
from .schemas import (
    ComplianceOut,
    DeviceOut,
    DevicePage,
    FetchPage,
    LinePage,
    TenantOut,
    TenantPage,
    device_out,
    fetch_out,
    line_out,
    tenant_out,
)

router = APIRouter(tags=["inventory"])
Mac = Annotated[str, Path(max_length=32, description="12 hex digits, separators allowed")]


@router.get("/tenants", response_model=TenantPage)
async def list_tenants(
    request: Request, me: Auth, q: Search = None, limit: Limit = 50, offset: Offset = 0
) -> TenantPage:
    page = await ctx_of(request).store.views.tenants(me.scope, q=q, limit=limit, offset=offset)
    return TenantPage(
        items=[tenant_out(t) for t in page.items], total=page.total, limit=limit, offset=offset
    )


@router.get("/tenants/{name}", response_model=TenantOut)
async def get_tenant(
    request: Request, me: Auth, name: Annotated[str, Path(max_length=64)]
) -> TenantOut:
    await tenant_in_scope(request, me, name)
    page = await ctx_of(request).store.views.tenants(me.scope, q=name, limit=500)
    for t in page.items:
        if t.name == name.strip().lower():
            return tenant_out(t)
    raise not_found("tenant")


@router.get("/lines", response_model=LinePage)
async def list_lines(
    request: Request,
    me: Auth,
    tenant: TenantName = None,
    q: Search = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> LinePage:
    tenant_id = await tenant_in_scope(request, me, tenant)
    page = await ctx_of(request).store.views.lines(
        me.scope, tenant_id=tenant_id, q=q, limit=limit, offset=offset
    )
    return LinePage(
        items=[line_out(x) for x in page.items], total=page.total, limit=limit, offset=offset
    )


@router.get("/devices", response_model=DevicePage)
async def list_devices(
    request: Request,
    me: Auth,
    tenant: TenantName = None,
    q: Search = None,
    compliant: Annotated[
        bool | None, Query(description="only compliant devices (true) or all others (false)")
    ] = None,
    compliance: Annotated[Compliance | None, Query(description="only this state")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> DevicePage:
    """Devices with their compliance: the version of their latest successful fetch of their
    hardened file against the version the boot server would serve them now."""
    tenant_id = await tenant_in_scope(request, me, tenant)
    page = await device_page(
        ctx_of(request),
        me.scope,
        tenant_id=tenant_id,
        q=q,
        compliant=compliant,
        state=compliance,
        limit=limit,
        offset=offset,
    )
    return DevicePage(items=list(page.items), total=page.total, limit=limit, offset=offset)


@router.get("/devices/{mac}", response_model=DeviceOut)
async def get_device(request: Request, me: Auth, mac: Mac) -> DeviceOut:
    ctx = ctx_of(request)
    key = normalize_mac_or_none(mac)
    desired = await desired_files(ctx)
    status = None if key is None else await ctx.store.views.device(me.scope, desired, key)
    if status is None:
        raise not_found("device")
    return device_out(status, problem_of(ctx, status.device.mac))


@router.get("/compliance", response_model=ComplianceOut)
async def compliance_counts(request: Request, me: Auth) -> ComplianceOut:
    """How many devices (of the caller's scope) are in each compliance state."""
    ctx = ctx_of(request)
    counts = await ctx.store.views.compliance_counts(me.scope, await desired_files(ctx))
    return ComplianceOut(**counts)


@router.get("/fetches", response_model=FetchPage)
async def list_fetches(
    request: Request,
    me: Auth,
    mac: Annotated[str | None, Query(max_length=64)] = None,
    tenant: TenantName = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> FetchPage:
    tenant_id = await tenant_in_scope(request, me, tenant)
    page = await ctx_of(request).store.views.fetches(
        me.scope, mac=mac, tenant_id=tenant_id, limit=limit, offset=offset
    )
    return FetchPage(
        items=[fetch_out(f) for f in page.items], total=page.total, limit=limit, offset=offset
    )
