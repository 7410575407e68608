"""``Tarefa``: the engine with its HTTP face — the job routes mounted on a FastAPI app, the SPEC
error bodies, the ``request-id`` header, and the job layer started by the app's lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from ..engine import Engine
from ..store import JobStore
from .access import Identity
from .asyncpath import install_async_paths
from .callbacks import callback_routes, render
from .errors import RequestIdMiddleware, install_error_handlers
from .fastpath import install_fast_paths
from .openapi import document_error_bodies
from .operator import operator_routes
from .quotas import DEFAULT_MAX_QUEUED_JOBS, DEFAULT_MAX_WAITING_PER_USER, QueueLimit, WaitingLimit
from .routes import job_routes
from .streams import events_routes


class Tarefa(Engine):
    """The asynchronous job layer of an application (see :class:`~tarefa.engine.Engine` for the
    other settings), mounted on a FastAPI app with :meth:`mount`.

    ``identity`` is the application's own sign-in: a callable (or coroutine function) from the
    request to a :class:`~tarefa.User`, or None for "not signed in" (``401``); every job route
    and every asynchronous call apply ownership with it (``docs/access.md``). Without one,
    access is open. ``max_waiting_per_user``: long polls open at once per user (``429``);
    ``max_queued_jobs``: queued jobs in the store beyond which asynchronous calls are ``503``.
    """

    def __init__(
        self,
        store: str | JobStore | None = None,
        *,
        identity: Identity | None = None,
        max_waiting_per_user: int = DEFAULT_MAX_WAITING_PER_USER,
        max_queued_jobs: int = DEFAULT_MAX_QUEUED_JOBS,
        **settings: Any,
    ) -> None:
        super().__init__(store, **settings)
        self.identity = identity
        self.waiting_limit = WaitingLimit(max_waiting_per_user, retry_after=self.retry_after)
        self.queue_limit = QueueLimit(lambda: self.store.count_queued(), max_queued_jobs, retry_after=5)

    def configure_access(
        self,
        *,
        identity: Identity | None = None,
        max_waiting_per_user: int | None = None,
        max_queued_jobs: int | None = None,
    ) -> None:
        """Override the access settings before start (``tarefa serve --users`` and the limits)."""
        if identity is not None:
            self.identity = identity
        if max_waiting_per_user is not None:
            self.waiting_limit.limit = max_waiting_per_user
        if max_queued_jobs is not None:
            self.queue_limit.limit = max_queued_jobs

    def render_callback(self, snapshot: bytes) -> bytes:
        """A callback's body: ``{"event": <event>, "job": <Job as on the wire>}`` (SPEC §10)."""
        return render(self, snapshot)

    def mount(self, app: FastAPI, prefix: str = "/api", *, dashboard: str | None = "/") -> None:
        """Add the job routes at ``{prefix}/jobs``, the SPEC error bodies, the ``request-id``
        header, and start/stop the job layer with the app's lifespan; and the operator's surface:
        ``/healthz``, ``/readyz``, ``/metrics``, ``{prefix}/changes`` and the dashboard at
        ``dashboard`` (None: no dashboard)."""
        self.jobs_href = f"{prefix.rstrip('/')}/jobs"
        app.state.tarefa = self
        app.include_router(operator_routes(self, prefix.rstrip("/"), dashboard))
        app.include_router(job_routes(self), prefix=self.jobs_href)
        app.include_router(events_routes(self), prefix=prefix.rstrip("/"))
        app.include_router(callback_routes(self), prefix=self.jobs_href)
        install_fast_paths(app, self)
        install_error_handlers(app)
        document_error_bodies(app)
        app.add_middleware(RequestIdMiddleware)
        original = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(application: Any) -> AsyncIterator[Any]:
            install_async_paths(app)  # the app's own routes exist by now
            async with self.running(), original(application) as state:
                yield state

        app.router.lifespan_context = lifespan
