"""Rendering portal pages: one Jinja2 environment (autoescaping on), page helpers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent.parent / "templates"))


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


TEMPLATES.env.filters["when"] = _when


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    principal = getattr(request.state, "principal", None)
    return TEMPLATES.TemplateResponse(
        request, template, {"me": principal, **context}, status_code=status
    )


def error_page(
    request: Request, status: int, message: str, headers: dict[str, str]
) -> HTMLResponse:
    if "HX-Request" in request.headers:  # an action's answer, shown in place
        fragment = page(request, "flash.html", status=status, message=message, error=True)
        fragment.headers.update(headers)
        return fragment
    if status == 401:
        from .login import login_page  # the login form doubles as the 401 page

        return login_page(request, status=401, message="Please log in.")
    response = page(request, "error.html", status=status, status_code=status, message=message)
    response.headers.update(headers)
    return response
