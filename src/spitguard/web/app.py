"""The FastAPI application: one app, routers mounted by area."""

from __future__ import annotations

from fastapi import FastAPI

from .. import __version__
from .context import WebContext
from .provision import ProvisionMiddleware


def create_app(ctx: WebContext) -> FastAPI:
    app = FastAPI(
        title="spitguard",
        version=__version__,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.add_middleware(ProvisionMiddleware, server=ctx.provision)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
