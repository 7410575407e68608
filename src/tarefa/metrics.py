"""Prometheus metrics of one engine (SPEC §11), in a registry of its own.

Each process serves its own figures: several API and worker processes on one PostgreSQL store
are scraped one by one and summed by Prometheus. A figure is observed once, in the process where
it happens: a job's queue time where a worker claims it, its duration where the worker ends it,
a wake-up where a long poll answers. ``tarefa_jobs`` is read from the store (one grouped query,
cached for :attr:`Metrics.cache_seconds`, so a scrape costs at most one query).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import model
from .model import Job, JobState

log = logging.getLogger("tarefa.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_WAKEUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Outcomes exported (as 0) before anything happens, so that the series exist from the start.
RECOVERY_OUTCOMES = ("worker_lost", "requeued")
CALLBACK_OUTCOMES = ("delivered", "failed", "gone", "expired", "refused")


class _StoreJobs(Collector):
    """``tarefa_jobs{state,operation}`` from the counts :class:`Metrics` keeps."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("tarefa_jobs", "Jobs in the store", labels=["state", "operation"])
        for (state, operation), count in sorted(self.metrics.job_counts.items()):
            family.add_metric([state, operation], count)
        yield family


class Metrics:
    """The metric families of one engine. ``count_jobs`` reads the store's counts; ``long_polls``
    tells how many long polls wait right now."""

    def __init__(
        self,
        count_jobs: Callable[[], Awaitable[dict[tuple[str, str], int]]],
        long_polls: Callable[[], int],
        *,
        cache_seconds: float = 5.0,
        query_timeout: float = 2.0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.cache_seconds = cache_seconds
        self.query_timeout = query_timeout
        self.job_counts: dict[tuple[str, str], int] = {}
        self._count_jobs = count_jobs
        self._counted_at = -float("inf")
        self._counting = asyncio.Lock()
        self._queue_of: dict[str, Histogram] = {}
        self._duration_of: dict[tuple[str, JobState], Histogram] = {}
        self._define(long_polls)

    def _define(self, long_polls: Callable[[], int]) -> None:
        registry = self.registry
        self.job_duration = Histogram(
            "tarefa_job_duration_seconds", "Time from a job's start to its end, by how it ended",
            ["operation", "state"], buckets=_JOB_BUCKETS, registry=registry,
        )  # fmt: skip
        self.job_queue = Histogram(
            "tarefa_job_queue_seconds", "Time a job waited queued before a worker started it",
            ["operation"], buckets=_JOB_BUCKETS, registry=registry,
        )  # fmt: skip
        self.wakeup = Histogram(
            "tarefa_wakeup_seconds", "Time from the commit of a change to the answer of a long poll it ends",
            buckets=_WAKEUP_BUCKETS, registry=registry,
        )  # fmt: skip
        waiting = Gauge("tarefa_long_polls_waiting", "Long polls waiting right now", registry=registry)
        waiting.set_function(lambda: float(long_polls()))
        self.event_streams = Gauge("tarefa_event_streams_open", "Event streams open right now", registry=registry)
        self.recovered = Counter(
            "tarefa_jobs_recovered", "Jobs whose worker was lost, by what became of them", ["outcome"],
            registry=registry,
        )  # fmt: skip
        self.callbacks = Counter("tarefa_callbacks", "Callback deliveries, by outcome", ["outcome"], registry=registry)
        for outcome in RECOVERY_OUTCOMES:
            self.recovered.labels(outcome)
        for outcome in CALLBACK_OUTCOMES:
            self.callbacks.labels(outcome)
        registry.register(_StoreJobs(self))

    # -- observations -----------------------------------------------------------------------------

    def job_started(self, job: Job) -> None:
        """A worker of this process started the job."""
        if job.start_time is not None:
            queue = self._queue_of.get(job.operation)
            if queue is None:  # the labelled series, looked up once per operation (not per job)
                queue = self._queue_of[job.operation] = self.job_queue.labels(job.operation)
            queue.observe(_seconds(job.start_time - job.create_time))

    def job_ended(self, job: Job) -> None:
        """A worker of this process ended the job."""
        if job.start_time is not None and job.end_time is not None:
            key = (job.operation, job.state)
            duration = self._duration_of.get(key)
            if duration is None:
                duration = self._duration_of[key] = self.job_duration.labels(job.operation, job.state.value)
            duration.observe(_seconds(job.end_time - job.start_time))

    def jobs_recovered(self, jobs: Sequence[Job]) -> None:
        """This process recovered these jobs from a lost worker."""
        for job in jobs:
            self.recovered.labels("requeued" if job.state is JobState.QUEUED else "worker_lost").inc()

    def long_poll_woken(self, job: Job) -> None:
        """A long poll answers because of this change (committed at its ``last_modified``)."""
        self.wakeup.observe(_seconds(model.utcnow() - job.last_modified))

    # -- exposition -------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the store's job counts unless read within :attr:`cache_seconds`."""
        async with self._counting:
            if time.monotonic() - self._counted_at < self.cache_seconds:
                return
            try:
                self.job_counts = await asyncio.wait_for(self._count_jobs(), self.query_timeout)
            except Exception as exc:  # a scrape still answers, without the store's figures
                log.warning("cannot count the jobs in the store: %s", exc)
                self.job_counts = {}
            self._counted_at = time.monotonic()

    async def exposition(self) -> bytes:
        """The Prometheus text format of every family (:data:`CONTENT_TYPE`)."""
        await self.refresh()
        return generate_latest(self.registry)


def _seconds(delta: object) -> float:
    total = getattr(delta, "total_seconds", None)
    return max(0.0, float(total())) if callable(total) else 0.0


async def serve_metrics(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """A minimal HTTP server answering ``GET /metrics`` (``tarefa worker --metrics-port``)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.split(b"?")[0] == b"/metrics":
                status, body, kind = b"200 OK", await metrics.exposition(), CONTENT_TYPE.encode()
            else:
                status, body, kind = b"404 Not Found", b"only /metrics is served here\n", b"text/plain"
            head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            writer.write(head % (status, kind, len(body)) + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)
