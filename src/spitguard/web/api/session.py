"""Who am I, and logging out (logging in happens on the portal's login form)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..auth import SESSION_COOKIE, Auth, clear_session_cookie, ctx_of
from .schemas import MeOut

router = APIRouter(tags=["session"])


@router.get("/me", response_model=MeOut)
async def me(request: Request, who: Auth) -> MeOut:
    return MeOut(username=who.user.username, role=who.user.role, tenant=who.user.tenant)


@router.post("/logout", status_code=204, response_class=Response)
async def logout(request: Request, who: Auth) -> Response:
    response = Response(status_code=204)
    if who.via == "session":
        await ctx_of(request).store.admins.close_session(request.cookies[SESSION_COOKIE])
        clear_session_cookie(request, response)
    return response
