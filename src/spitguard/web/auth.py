"""Who is asking: a portal session (cookie + CSRF token) or an API token (bearer).

Session cookies are HttpOnly, SameSite=Strict, and Secure when the request came over
HTTPS. Every state-changing request made with a session must carry the session's CSRF
token (header `X-CSRF-Token`, or form field `csrf_token`); bearer tokens need none, as
browsers never send them on their own.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request, Response

from ..store.repos import AdminInfo, Scope
from .context import WebContext
from .errors import ApiError, not_found, operators_only, unauthenticated

SESSION_COOKIE = "spitguard_session"
LOGIN_CSRF_COOKIE = "spitguard_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_SECRET = 256  # longer cookies or tokens are not ours: refuse before hashing


@dataclass(frozen=True, slots=True)
class Principal:
    user: AdminInfo
    via: Literal["session", "token"]
    csrf: str  # empty for API tokens

    @property
    def scope(self) -> Scope:
        """None for operators (every tenant), the tenant id for a tenant admin."""
        return None if self.user.is_operator else self.user.tenant_id


def ctx_of(request: Request) -> WebContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, WebContext)
    return ctx


def csrf_for(session_token: str) -> str:
    """The CSRF token of a session: derived from the cookie, so nothing more is stored."""
    return hmac.new(session_token.encode(), b"spitguard csrf", hashlib.sha256).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


async def _csrf_given(request: Request) -> str:
    header = request.headers.get(CSRF_HEADER)
    if header is not None:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


async def authenticate(request: Request) -> Principal:
    """The principal of the request, or 401; checks CSRF for state-changing requests."""
    store = ctx_of(request).store
    auth = request.headers.get("authorization", "")
    scheme, _, credentials = auth.partition(" ")
    if auth:
        if scheme.lower() != "bearer" or not credentials or len(credentials) > _MAX_SECRET:
            raise unauthenticated()
        user = await store.admins.token_user(credentials.strip())
        if user is None:
            raise unauthenticated()
        return Principal(user, "token", "")
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if not cookie or len(cookie) > _MAX_SECRET:
        raise unauthenticated()
    user = await store.admins.session_user(cookie)
    if user is None:
        raise unauthenticated()
    principal = Principal(user, "session", csrf_for(cookie))
    if request.method not in SAFE_METHODS and not same_secret(
        await _csrf_given(request), principal.csrf
    ):
        raise ApiError(
            403,
            f"missing or wrong CSRF token: send the {CSRF_HEADER} header (portal sessions "
            "need it on every change) or use an API token",
        )
    return principal


async def require_operator(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    if not principal.user.is_operator:
        raise operators_only()
    return principal


Auth = Annotated[Principal, Depends(authenticate)]
OperatorAuth = Annotated[Principal, Depends(require_operator)]


async def tenant_in_scope(request: Request, principal: Principal, name: str | None) -> int | None:
    """The id of a named tenant the principal may see; 404 for unknown and foreign alike."""
    if name is None:
        return None
    tenant_id = await ctx_of(request).store.views.tenant_id(principal.scope, name)
    if tenant_id is None:
        raise not_found("tenant")
    return tenant_id


def set_session_cookie(request: Request, response: Response, token: str, max_age: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"
