"""The FastAPI application: one app, routers mounted by area."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .api import api_router
from .context import WebContext
from .errors import install_error_handlers
from .login_limiter import LoginLimiter
from .portal import router as portal_router
from .provision import ProvisionMiddleware

STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(ctx: WebContext) -> FastAPI:
    app = FastAPI(
        title="spitguard",
        version=__version__,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    web = ctx.settings.web
    app.state.login_limiter = LoginLimiter(
        ctx.wall_clock,
        free=web.login_free_failures,
        max_failures=web.login_max_failures,
        lockout=web.login_lockout,
    )
    install_error_handlers(app)
    app.add_middleware(ProvisionMiddleware, server=ctx.provision)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(api_router())
    app.include_router(portal_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
