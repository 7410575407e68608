"""``Tarefa``: the job layer of one application — its operations, store, runner and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from fastapi import FastAPI, Request

from . import model
from .http.errors import RequestIdMiddleware, install_error_handlers
from .http.openapi import document_error_bodies
from .http.routes import job_routes
from .model import Job
from .operations import OperationRegistry, dump_input
from .runner import Runner
from .store import Created, Idempotency, Store, StoreError, open_store
from .waiting import ChangeHub

log = logging.getLogger("tarefa")
F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_STORE = "sqlite:///./tarefa.db"


class Tarefa:
    """The asynchronous job layer of an application.

    ``store`` is a URL (default: ``$TAREFA_STORE`` or ``sqlite:///./tarefa.db``) or a Store;
    ``workers`` is how many jobs this process runs at once (0: serve the API only).
    """

    def __init__(
        self,
        store: str | Store | None = None,
        *,
        workers: int = 4,
        lease_seconds: float = 30.0,
        grace_seconds: float = 30.0,
        retention: timedelta = timedelta(days=7),
        retry_after: int = 1,
    ) -> None:
        self.operations = OperationRegistry()
        self.workers = workers
        self.lease_seconds = lease_seconds
        self.grace_seconds = grace_seconds
        self.retention = retention
        self.retry_after = retry_after
        self.jobs_href = "/api/jobs"
        self.hub = ChangeHub()
        self._store_spec: str | Store = store or os.environ.get("TAREFA_STORE") or DEFAULT_STORE
        self._store: Store | None = None
        self._runner: Runner | None = None
        self._background: list[asyncio.Task[None]] = []

    # -- declaring ----------------------------------------------------------------------------

    def operation(self, name: str, *, retry_safe: bool = False, max_attempts: int = 3) -> Callable[[F], F]:
        """Declare an operation: ``async def f(ctx: JobContext, params: Model)`` or a plain
        ``def`` (run in a thread with a :class:`ThreadJobContext`). The second parameter's
        annotation is the input type. ``retry_safe=True`` lets a job whose worker died run
        again (up to ``max_attempts`` in all); by default it fails with ``worker_lost``."""

        def register(function: F) -> F:
            self.operations.add(name, function, retry_safe=retry_safe, max_attempts=max_attempts)
            return function

        return register

    def mount(self, app: FastAPI, prefix: str = "/api") -> None:
        """Add the job routes at ``{prefix}/jobs``, the SPEC error bodies, the ``request-id``
        header, and start/stop the job layer with the app's lifespan."""
        self.jobs_href = f"{prefix.rstrip('/')}/jobs"
        app.state.tarefa = self
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

    def configure(
        self,
        *,
        store: str | Store | None = None,
        workers: int | None = None,
        grace_seconds: float | None = None,
        lease_seconds: float | None = None,
    ) -> None:
        """Override settings before start (``tarefa serve/worker`` options do this)."""
        if self._store is not None:
            raise RuntimeError("configure() must be called before the job layer starts")
        if store is not None:
            self._store_spec = store
        if workers is not None:
            self.workers = workers
        if grace_seconds is not None:
            self.grace_seconds = grace_seconds
        if lease_seconds is not None:
            self.lease_seconds = lease_seconds

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the job layer is not started (start() or the app's lifespan starts it)")
        return self._store

    @property
    def runner(self) -> Runner | None:
        return self._runner

    def build_store(self) -> Store:
        """The configured store, not yet opened."""
        spec = self._store_spec
        return open_store(spec) if isinstance(spec, str) else spec

    async def start(self) -> None:
        """Open the store, recover what a crash left, start the workers and the purge."""
        store = self.build_store()
        store.add_listener(self.hub.publish)
        await store.open()
        self._store = store
        self._runner = Runner(store, self.operations, concurrency=self.workers, lease_seconds=self.lease_seconds)
        await self._runner.start()
        self._background = [asyncio.create_task(self._purge_loop(), name="tarefa-purge")]

    def begin_shutdown(self) -> None:
        """First step of a graceful stop: answer long polls now, take no new jobs."""
        self.hub.close()
        if self._runner is not None:
            self._runner.stop_accepting()

    async def stop(self) -> None:
        """Let running jobs finish for the grace period, release the rest, close the store."""
        self.begin_shutdown()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.stop(self.grace_seconds)
        if self._store is not None:
            await self._store.close()
        self._store = self._runner = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Tarefa]:
        """``async with tarefa.running():`` — started inside, stopped gracefully after."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def _purge_loop(self) -> None:
        while True:
            try:
                purged = await self.store.purge_jobs(model.utcnow() - self.retention)
                if purged:
                    log.info("purged %d job(s) that ended more than %s ago", purged, self.retention)
            except StoreError as exc:
                log.warning("cannot purge old jobs: %s", exc)
            await asyncio.sleep(min(3600.0, max(1.0, self.retention.total_seconds() / 100)))

    # -- jobs ---------------------------------------------------------------------------------

    async def submit(
        self,
        operation: str,
        input: Any = None,
        *,
        owner: str = "",
        resource: str | None = None,
        resource_key: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> Created:
        """Store a queued job of ``operation`` durably (the core of every asynchronous call)."""
        declared = self.operations.get(operation)
        if declared is None:
            raise ValueError(f"unknown operation {operation!r}: declare it with @tarefa.operation({operation!r})")
        job = model.new_job(
            operation,
            now=model.utcnow(),
            input=dump_input(input),
            owner=owner,
            resource=resource,
            max_attempts=declared.max_attempts,
        )
        return await self.store.create_job(job, idempotency=idempotency, resource_key=resource_key)

    async def wait_for_change(
        self, job_id: str, owner: str | None, *, baseline: datetime | None, timeout: float
    ) -> Job | None:
        """A long poll (SPEC §3): the job once it changed after ``baseline``, or after ``timeout``."""
        return await self.hub.wait_for_change(
            job_id, lambda: self.store.get_job(job_id, owner), baseline=baseline, timeout=timeout
        )

    async def wait_until_terminal(self, job: Job, timeout: float) -> Job:
        """The job once it has ended, or as it is after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not job.is_terminal and (remaining := deadline - loop.time()) > 0:
            changed = await self.wait_for_change(job.id, None, baseline=job.last_modified, timeout=remaining)
            if changed is None or changed.last_modified == job.last_modified:
                break
            job = changed
        return job

    # -- users (SPEC §7 comes later: until then every job belongs to the anonymous user) ---------

    def owner_of(self, request: Request) -> str:
        """The user a new job belongs to."""
        return ""

    def visible_owner(self, request: Request) -> str | None:
        """Whose jobs the caller may see (None: all)."""
        return None
