"""The JSON API under /api/v1 (the portal acts through the same checks)."""

from __future__ import annotations

from fastapi import APIRouter

from . import actions, audits, guard, inventory, registrations, session
from .schemas import ErrorOut

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (401, "not logged in"),
        (403, "not allowed (CSRF token missing, or operators only)"),
        (404, "not found, or not visible to you"),
        (422, "invalid input"),
    )
}


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=_ERRORS)
    for module in (session, inventory, registrations, guard, actions, audits):
        router.include_router(module.router)
    return router
