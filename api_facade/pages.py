"""What a browser opens on the facade: the playground and the API reference, served from files
in installed packages, so that they work on a host with no internet.

- ``/playground``: the page in ``api_facade/playground/`` (plain HTML, CSS and JavaScript, no build).
- ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc): FastAPI's pages pointed at the copies of their
  scripts that the ``fastapi-offline`` package ships, instead of a CDN.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

PLAYGROUND = Path(__file__).parent / "playground"
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL = "/docs/assets"


def install(app: FastAPI) -> None:
    """The pages, on an app made with ``docs_url=None`` and ``redoc_url=None``."""
    app.mount("/playground/static", StaticFiles(directory=PLAYGROUND), name="playground-static")
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    # The two references read the same schema, under the same title and icon.
    schema, title, icon = app.openapi_url or "/openapi.json", f"{app.title} API", f"{DOCS_ASSETS_URL}/favicon.png"
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/playground", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(PLAYGROUND / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=schema,
            title=title,
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=icon,
            oauth2_redirect_url=oauth2_redirect,
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=schema,
            title=title,
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=icon,
            with_google_fonts=False,
        )
