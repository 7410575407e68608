"""The engine: the job layer of one application — its operations, store, runner and the
application layer (:class:`~tarefa.jobs.Jobs`) — with no web framework in it.

:class:`tarefa.Tarefa` (in :mod:`tarefa.http.mount`) is this engine plus the HTTP routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from . import model
from .jobs import Jobs
from .metrics import Metrics
from .operations import OperationRegistry
from .runner import Runner
from .store import DocumentKind, JobStore, StoreError, open_store
from .streams import EventStreams
from .waiting import ChangeHub

log = logging.getLogger("tarefa")
F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_STORE = "sqlite:///./tarefa.db"


class Engine:
    """The asynchronous job layer of an application.

    ``store`` is a URL (default: ``$TAREFA_STORE`` or ``sqlite:///./tarefa.db``; ``memory://``
    for a store in memory) or a store; ``workers`` is how many jobs this process runs at once
    (0: serve the API only). :attr:`jobs` is the application layer: every use of a job.
    """

    def __init__(
        self,
        store: str | JobStore | None = None,
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
        self._store_spec: str | JobStore = store or os.environ.get("TAREFA_STORE") or DEFAULT_STORE
        self._store: JobStore | None = None
        self.jobs = Jobs(lambda: self.store, self.operations, self.hub)
        self.streams = EventStreams(lambda: self.store, self.jobs)
        self.metrics = Metrics(lambda: self.store.count_jobs(), lambda: self.hub.waiting)
        self.hub.on_wakeup = self.metrics.long_poll_woken
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

    def configure(
        self,
        *,
        store: str | JobStore | None = None,
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
    def store(self) -> JobStore:
        if self._store is None:
            raise RuntimeError("the job layer is not started (start() or the app's lifespan starts it)")
        return self._store

    @property
    def runner(self) -> Runner | None:
        return self._runner

    @property
    def store_url(self) -> str:
        """The store's URL without a password (for logs), or the store's class name."""
        spec = self._store_spec
        if not isinstance(spec, str):
            return type(spec).__name__
        scheme, sep, rest = spec.partition("://")
        credentials, at, place = rest.rpartition("@")
        if at and ":" in credentials:
            credentials = credentials.split(":", 1)[0] + ":***"
        return f"{scheme}{sep}{credentials}{at}{place}"

    def build_store(self) -> JobStore:
        """The configured store, not yet opened."""
        spec = self._store_spec
        return open_store(spec) if isinstance(spec, str) else spec

    async def start(self) -> None:
        """Open the store, recover what a crash left, start the workers and the purge."""
        store = self.build_store()
        store.add_listener(self.hub.publish)
        store.add_listener(self.streams.publish)
        self.streams.reopen(store)
        await store.open()
        self._store = store
        self._runner = Runner(
            store, self.operations, concurrency=self.workers, lease_seconds=self.lease_seconds, metrics=self.metrics
        )
        await self._runner.start()
        self._background = [asyncio.create_task(self._purge_loop(), name="tarefa-purge")]

    def begin_shutdown(self) -> None:
        """First step of a graceful stop: answer long polls and end streams now, take no new jobs."""
        self.hub.close()
        self.streams.close()
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
    async def running(self) -> AsyncIterator[Engine]:
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

    # -- the application's records -------------------------------------------------------------

    def documents(self, kind: str) -> DocumentKind:
        """The application's documents of ``kind``, kept in the job store (started engine only):
        ``await tarefa.documents("host").get("esx-01")``."""
        return DocumentKind(self.store.documents, kind)

    async def claim_documents(self, documents: Sequence[tuple[str, str, dict[str, Any]]]) -> bool:
        """Insert every ``(kind, key, data)`` in one transaction, or none (False) if any key
        exists: names that two concurrent requests must never both get (on every store)."""
        return await self.store.insert_documents(documents)
