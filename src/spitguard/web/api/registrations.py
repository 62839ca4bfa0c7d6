"""Registrations with their NAT evidence and a plain-language verdict."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from ..auth import Auth, ctx_of, tenant_in_scope
from ..errors import not_found
from .params import MAX_ID, Limit, Offset, Search, TenantName
from .schemas import RegistrationOut, RegistrationPage, registration_out

router = APIRouter(tags=["registrations"])


@router.get("/registrations", response_model=RegistrationPage)
async def list_registrations(
    request: Request,
    me: Auth,
    tenant: TenantName = None,
    q: Search = None,
    exposed: Annotated[
        bool | None, Query(description="only phones directly reachable from the Internet")
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> RegistrationPage:
    tenant_id = await tenant_in_scope(request, me, tenant)
    page = await ctx_of(request).store.views.registrations(
        me.scope, tenant_id=tenant_id, q=q, exposed=exposed, limit=limit, offset=offset
    )
    return RegistrationPage(
        items=[registration_out(r) for r in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
    )


@router.get("/registrations/{registration_id}", response_model=RegistrationOut)
async def get_registration(
    request: Request, me: Auth, registration_id: Annotated[int, Path(ge=1, le=MAX_ID)]
) -> RegistrationOut:
    found = await ctx_of(request).store.views.registration(me.scope, registration_id)
    if found is None:
        raise not_found("registration")
    return registration_out(found)
