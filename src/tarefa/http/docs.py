"""Interactive API docs (Swagger UI) served from installed packages: no CDN, works offline."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path


def serve_api_docs(app: FastAPI, path: str = "/docs") -> None:
    """Serve Swagger UI at ``path`` with its assets from the ``swagger-ui-bundle`` package.

    Create the app with ``FastAPI(docs_url=None, redoc_url=None)`` so that FastAPI's own docs
    page (which loads its assets from a CDN) is not served.
    """
    static = f"{path.rstrip('/')}/static"
    app.mount(static, StaticFiles(directory=str(swagger_ui_path)), name="tarefa-docs-static")

    @app.get(path, include_in_schema=False)
    async def api_docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} — API docs",
            swagger_js_url=f"{root}{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{static}/swagger-ui.css",
            swagger_favicon_url=f"{root}{static}/favicon-32x32.png",
        )
