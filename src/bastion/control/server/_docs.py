"""``/api/v1/docs``: Swagger UI over the OpenAPI document, from files served here, never from a CDN.

The assets come from the ``fastapi-offline`` package (Swagger UI's bundle and stylesheet, pinned by
the lock), so the page works on a machine without network and loads nothing from elsewhere. Like
the OpenAPI document, the page and its assets need no API key: they hold no tenant's data.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/api/v1/docs"
ASSETS_URL = f"{DOCS_URL}/assets"


def _assets_dir() -> Path:
    return Path(str(importlib.resources.files("fastapi_offline") / "static"))


def install_docs(app: FastAPI) -> None:
    """Serve the Swagger UI page at ``DOCS_URL`` and its assets under ``ASSETS_URL``; create the
    app with ``docs_url=None`` (FastAPI's own page loads them from a CDN)."""
    assert app.openapi_url is not None
    openapi_url = app.openapi_url
    app.mount(ASSETS_URL, StaticFiles(directory=_assets_dir()), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def docs() -> HTMLResponse:  # pyright: ignore[reportUnusedFunction]
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            # Swagger UI would otherwise show a badge fetched from a public validator service.
            swagger_ui_parameters={"validatorUrl": None},
        )
