"""``Tarefa``: the engine with its HTTP face — the job routes mounted on a FastAPI app, the SPEC
error bodies, the ``request-id`` header, and the job layer started by the app's lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from ..engine import Engine
from .errors import RequestIdMiddleware, install_error_handlers
from .openapi import document_error_bodies
from .operator import operator_routes
from .routes import job_routes


class Tarefa(Engine):
    """The asynchronous job layer of an application (see :class:`~tarefa.engine.Engine` for the
    settings), mounted on a FastAPI app with :meth:`mount`."""

    def mount(self, app: FastAPI, prefix: str = "/api", *, dashboard: str | None = "/") -> None:
        """Add the job routes at ``{prefix}/jobs``, the SPEC error bodies, the ``request-id``
        header, and start/stop the job layer with the app's lifespan; and the operator's surface:
        ``/healthz``, ``/readyz``, ``/metrics``, ``{prefix}/changes`` and the dashboard at
        ``dashboard`` (None: no dashboard)."""
        self.jobs_href = f"{prefix.rstrip('/')}/jobs"
        app.state.tarefa = self
        app.include_router(operator_routes(self, prefix.rstrip("/"), dashboard))
        app.include_router(job_routes(self), prefix=self.jobs_href)
        install_error_handlers(app)
        document_error_bodies(app)
        app.add_middleware(RequestIdMiddleware)
        original = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(application: Any) -> AsyncIterator[Any]:
            async with self.running(), original(application) as state:
                yield state

        app.router.lifespan_context = lifespan
