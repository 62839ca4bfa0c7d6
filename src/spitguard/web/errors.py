"""Errors as JSON with one clear message (`{"error": "..."}`), for the API and htmx alike;
portal pages get the same message rendered as HTML."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..store import AlreadyExistsError, InvalidInputError, NotFoundError, StoreError

NOT_FOUND = "not found"


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def not_found(what: str) -> ApiError:
    # The same answer for "does not exist" and "not yours": tenants learn nothing of others.
    return ApiError(404, f"{what} not found")


def unauthenticated() -> ApiError:
    return ApiError(
        401,
        "not logged in: log in to the portal or send an API token as "
        "'Authorization: Bearer <token>'",
        {"WWW-Authenticate": "Bearer"},
    )


def operators_only() -> ApiError:
    return ApiError(403, "only operators may see or change this")


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/")


def _render(request: Request, status: int, message: str, headers: dict[str, str]) -> Response:
    if _wants_html(request):
        # The portal renders its own error pages (a fragment for htmx).
        from .portal.render import error_page

        return error_page(request, status, message, headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _render(request, exc.status, exc.message, exc.headers)

    async def store_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StoreError)
        status = (
            404
            if isinstance(exc, NotFoundError)
            else 409
            if isinstance(exc, AlreadyExistsError)
            else 422
            if isinstance(exc, InvalidInputError)
            else 503
        )
        return _render(request, status, exc.message, {})

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = [_problem(e) for e in exc.errors()]
        message = "invalid request: " + "; ".join(problems)
        if _wants_html(request):
            return _render(request, 422, message, {})
        return JSONResponse({"error": message, "problems": problems}, status_code=422)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = str(exc.detail) if exc.status_code != 404 else NOT_FOUND
        return _render(request, exc.status_code, message, dict(exc.headers or {}))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
    return f"{where or 'request'}: {error.get('msg', 'invalid')}"
