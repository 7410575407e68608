"""Interactive API docs (Swagger UI, ReDoc) served from installed packages: no CDN, works offline."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

#: Swagger UI 5 and ReDoc, shipped by the fastapi-offline package.
ASSETS = files("fastapi_offline") / "static"


def serve_api_docs(app: FastAPI, path: str = "/docs", redoc_path: str | None = "/redoc") -> None:
    """Serve Swagger UI at ``path`` (and ReDoc at ``redoc_path``) with assets from installed packages.

    Create the app with ``FastAPI(docs_url=None, redoc_url=None)`` so that FastAPI's own pages,
    which load their assets from a CDN, are not served.
    """
    static = f"{path.rstrip('/')}/static"
    app.mount(static, StaticFiles(directory=str(ASSETS)), name="tarefa-docs-static")

    @app.get(path, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} — API docs",
            swagger_js_url=f"{root}{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{static}/swagger-ui.css",
            swagger_favicon_url=f"{root}{static}/favicon.png",
        )

    if redoc_path is not None:

        @app.get(redoc_path, include_in_schema=False)
        async def redoc(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            return get_redoc_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} — API reference",
                redoc_js_url=f"{root}{static}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{static}/favicon.png",
                with_google_fonts=False,
            )
