"""The HTTP side: one FastAPI app serving the boot server (`/provision/`), the JSON API
(`/api/v1/`) and the portal, run by uvicorn inside the edge's event loop."""

from .app import create_app
from .context import WebContext
from .server import WebServer

__all__ = ["WebContext", "WebServer", "create_app"]
