"""Portal login and logout, with login CSRF (double-submit cookie) and the rate limiter."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ...store.repos import new_secret
from ..auth import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Auth,
    clear_session_cookie,
    client_address,
    ctx_of,
    same_secret,
    set_session_cookie,
)
from ..errors import ApiError
from ..login_limiter import LoginLimiter
from .render import page

router = APIRouter(include_in_schema=False)
WRONG_LOGIN = "Wrong user name or password."


def limiter_of(request: Request) -> LoginLimiter:
    limiter = request.app.state.login_limiter
    assert isinstance(limiter, LoginLimiter)
    return limiter


def login_page(request: Request, *, status: int = 200, message: str = "") -> HTMLResponse:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_secret()
    response = page(request, "login.html", status=status, csrf=token, message=message)
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/login",
    )
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> HTMLResponse:
    return login_page(request)


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    username: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=256)] = "",
) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not same_secret(csrf_token, cookie):
        raise ApiError(403, "the login form expired or did not come from this portal: reload it")
    ctx = ctx_of(request)
    limiter = limiter_of(request)
    account = username.strip().lower()[:64]
    source = client_address(request)
    wait = limiter.retry_after(account, source)
    if wait is not None:
        what = "refused" if limiter.locked(account, source) else "slowed down"
        seconds = max(1, int(wait + 0.999))
        return _too_many(request, what, seconds)
    user = await ctx.store.admins.authenticate(username, password)
    if user is None:
        limiter.failed(account, source)
        return login_page(request, status=401, message=WRONG_LOGIN)
    limiter.succeeded(account, source)
    lifetime = ctx.settings.web.session_lifetime
    token = await ctx.store.admins.open_session(user.id, lifetime=lifetime)
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(request, response, token, int(lifetime))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


def _too_many(request: Request, what: str, seconds: int) -> Response:
    response = login_page(
        request,
        status=429,
        message=f"Too many failed logins from your address: logins are {what}; "
        f"try again in {seconds} s.",
    )
    response.headers["Retry-After"] = str(seconds)
    return response


@router.post("/logout")
async def logout(request: Request, who: Auth) -> Response:
    if who.via == "session":
        await ctx_of(request).store.admins.close_session(request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(request, response)
    return response
