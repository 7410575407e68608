"""The operator's routes (SPEC §11): ``/healthz``, ``/readyz``, ``/metrics``, the dashboard at
``/`` and ``GET {prefix}/changes``, the long poll the dashboard waits on for "any change".

Why a change endpoint rather than one long poll per job on screen: a browser opens at most six
connections to a server over HTTP/1.1, and a page shows up to a hundred jobs. The dashboard
waits on one request that the :class:`~tarefa.waiting.ChangeHub` ends at the next change the
viewer may see — no store query per waiter — and then reads the page of jobs once.
"""

from __future__ import annotations

import asyncio
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from ..engine import Engine
from ..metrics import CONTENT_TYPE
from ..store import StoreError
from .access import viewer_of
from .errors import ApiError

READY_TIMEOUT = 3.0
_ASSETS = files("tarefa.http") / "dashboard"
_TYPES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


def operator_routes(engine: Engine, prefix: str, dashboard: str | None = "/") -> APIRouter:
    """The routes of the operator's surface (module doc) for ``engine``, its API at ``prefix``."""
    router = APIRouter()
    _health(router, engine)
    _changes(router, engine, prefix)
    if dashboard is not None:
        _dashboard(router, engine, dashboard.rstrip("/"))
    return router


def _health(router: APIRouter, engine: Engine) -> None:
    @router.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b'{"status": "ok"}', media_type="application/json", headers={"Cache-Control": "no-store"})

    @router.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        try:
            await asyncio.wait_for(engine.store.check_ready(), READY_TIMEOUT)
        except (StoreError, TimeoutError, RuntimeError) as exc:
            reason = str(exc) or f"no answer from the store within {READY_TIMEOUT:.0f} s"
            raise ApiError(
                503, "not_ready", f"the job store is not ready: {reason}", headers={"Retry-After": "1"}
            ) from None
        return Response(b'{"status": "ready"}', media_type="application/json", headers={"Cache-Control": "no-store"})

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(await engine.metrics.exposition(), media_type=CONTENT_TYPE)


def _changes(router: APIRouter, engine: Engine, prefix: str) -> None:
    @router.get(f"{prefix}/changes", tags=["jobs"], summary="Wait for any change of the caller's jobs")
    async def changes(
        request: Request,
        after: Annotated[str | None, Query(max_length=64, description="The token of an earlier answer")] = None,
        poll_timeout: Annotated[int, Query(ge=0, le=120, description="Seconds to wait for a change")] = 0,
    ) -> dict[str, str]:
        """Answers ``{"token": T}`` once a job the caller may see has changed after the token
        ``after`` (at once without one, or with a token of another server process), or after
        ``poll_timeout`` seconds with the token unchanged. Read the jobs after each answer."""
        token = await engine.jobs.wait_for_any_change(await viewer_of(request), after, float(poll_timeout))
        return {"token": token}


def _dashboard(router: APIRouter, engine: Engine, root: str) -> None:
    assets = {name: (_ASSETS / name).read_bytes() for name in _TYPES}

    @router.get(root or "/", include_in_schema=False)
    async def dashboard() -> Response:
        page = (_ASSETS / "index.html").read_text(encoding="utf-8")
        page = page.replace("{{root}}", root).replace("{{jobs}}", engine.jobs_href)
        return Response(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    @router.get(f"{root}/dashboard/{{name}}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in assets:
            raise ApiError(404, "not_found", f"there is no dashboard asset {name!r}")
        return Response(assets[name], media_type=_TYPES[name], headers={"Cache-Control": "no-cache"})
