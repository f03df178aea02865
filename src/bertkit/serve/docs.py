"""``/docs``, the OpenAPI UI, served from this machine.

FastAPI's default page loads Swagger UI's script and stylesheet from a CDN, so offline (or behind a firewall)
it is a blank page. The UI's files ship in the ``swagger-ui-bundle-v2`` package (Swagger UI 5, which reads
OpenAPI 3.1); they are served under ``/docs/assets``. Without that package ``/docs`` is off, and the server says
so when it starts; ``/openapi.json`` is served either way.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger("bertkit")

ASSETS = "/docs/assets"


def swagger_ui_dir() -> Path | None:
    """The folder of Swagger UI's files (swagger-ui-bundle.js, swagger-ui.css), or None if not installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(str(swagger_ui_path))
    return path if (path / "swagger-ui-bundle.js").is_file() and (path / "swagger-ui.css").is_file() else None


def add_docs(app: FastAPI) -> bool:
    """Serve /docs from local files if they are installed; returns whether /docs is on."""
    folder = swagger_ui_dir()
    if folder is None:
        log.warning("/docs is off: the Swagger UI files are not installed (pip install swagger-ui-bundle-v2), and "
                    "loading them from a CDN fails offline; the schema is at /openapi.json")
        return False
    app.mount(ASSETS, StaticFiles(directory=folder), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon-32x32.png")

    return True
