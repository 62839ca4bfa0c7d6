"""The portal: server-rendered pages (Jinja2) with htmx for actions; assets in web/static."""

from .routes import router

__all__ = ["router"]
