"""The synchronous client: :class:`ClientCore` steps run by the blocking driver."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Unpack

import httpx

from .config import DEFAULT_URL, ClientConfig, ClientOptions, http_options
from .core import MAX_POLL_TIMEOUT, ClientCore, JobTarget, PageRequest, StateFilter
from .drivers import ChangeCallback, Steps, T, iterate_steps, run_steps
from .events import JobEvent
from .http_httpx import HttpxHttp
from .job import Job


class Client:
    """A client for Deploy-style job APIs (tarefa, ONTAP Select Deploy, ...).

    ::

        with Client("http://127.0.0.1:8080") as client:
            job = client.run("POST", "/api/hosts", {"name": "h1", "address": "10.0.0.1"})
            print(job.result)

    ``url`` is the server's base URL; paths and the server's hrefs are resolved against it like
    links in a web page (``/api/hosts`` is from the server's root). Keyword options (``auth``,
    ``verify``, ``jobs_path``, ``retry_for`` ...) are described in
    :class:`~tarefa.client.ClientOptions`. Every method retries connection errors and
    429/502/503/504 answers with backoff and jitter, honouring ``Retry-After``, and raises a
    :class:`~tarefa.client.ClientError` subclass on failure: never a raw httpx error.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **options: Unpack[ClientOptions],
    ) -> None:
        self.core = ClientCore(ClientConfig.from_options(url, options))
        self._http = httpx.Client(transport=transport, **http_options(options))
        self._io = HttpxHttp(self._http)
        self._sleep = sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _drive(self, steps: Steps[T]) -> T:
        return run_steps(steps, self._io, self._sleep)

    def submit(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        idempotency_key: str | bool = True,
        return_timeout: int | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Start an asynchronous call and return its job, usually still ``queued``.

        Accepts ``202 {"job": ...}`` and, with ``return_timeout`` (seconds the server may wait
        for the job to end before answering), ``200 {"job": <terminal job>}``.
        ``idempotency_key=True`` (the default) sends a fresh ``Idempotency-Key``, reused on
        every retry of this call, so that a retry after a dropped connection returns the same
        job instead of starting a second one; pass your own string to make the key span
        processes, or ``False`` to send none (the call is then retried only when it surely did
        not reach the server). ``timeout`` bounds the call including retries.
        """
        steps = self.core.submit(
            method,
            path,
            json,
            idempotency_key=idempotency_key,
            return_timeout=return_timeout,
            timeout=timeout,
        )
        return self._drive(steps)

    def wait(
        self,
        job: JobTarget,
        *,
        timeout: float | None = None,
        poll_timeout: int = MAX_POLL_TIMEOUT,
        on_change: ChangeCallback | None = None,
    ) -> Job:
        """Follow a job (a :class:`Job` or an id) with long polls and return it once terminal.

        Each poll is ``GET <job>?poll_timeout=N&last_modified=T``, T echoed exactly as the server
        sent it, so the server answers as soon as the job changes. ``on_change`` is called with
        the first version of the job seen, then once per visible change (state, message or
        progress), in order. A terminal ``failure`` is returned, not raised (see :meth:`run`).
        ``timeout`` (seconds, ``None``: no limit) raises :class:`~tarefa.client.WaitTimeout`
        with the last job seen. Connection losses and restarts of the server are retried.
        """
        return self._drive(self.core.wait(job, timeout=timeout, poll_timeout=poll_timeout, on_change=on_change))

    def run(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        idempotency_key: str | bool = True,
        timeout: float | None = None,
        poll_timeout: int = MAX_POLL_TIMEOUT,
        on_change: ChangeCallback | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        """:meth:`submit`, then :meth:`wait`, within one overall ``timeout``.

        Returns the job once it succeeded; raises :class:`~tarefa.client.JobFailed` (with the job
        and its error) if it failed, unless ``raise_on_failure=False``.
        """
        steps = self.core.run(
            method,
            path,
            json,
            idempotency_key=idempotency_key,
            timeout=timeout,
            poll_timeout=poll_timeout,
            on_change=on_change,
            raise_on_failure=raise_on_failure,
        )
        return self._drive(steps)

    def watch(
        self,
        job: JobTarget,
        *,
        after: int | None = None,
        timeout: float | None = None,
        poll_timeout: int = MAX_POLL_TIMEOUT,
    ) -> Iterator[JobEvent]:
        """The job's events (:class:`~tarefa.client.JobEvent`), oldest first, until its terminal one.

        Reads the server-sent event stream ``GET <job>/events`` (``Accept: text/event-stream``);
        a dropped connection or a restarted server is resumed with ``Last-Event-ID``, so that no
        event is missed and none comes twice. ``after``: start after that ``seq``. Against a
        server without streams (404/405/406 on the stream, or an answer that is not one), the job
        is followed with long polls instead and each visible change becomes an event with
        ``seq=None`` (changes between two polls are seen together, as the latest). ``timeout``
        raises :class:`~tarefa.client.WaitTimeout`. Stop iterating at any time to stop watching.
        """
        return iterate_steps(self.core.watch(job, after=after, timeout=timeout, poll_timeout=poll_timeout),
                             self._io, self._sleep)  # fmt: skip

    def events(
        self, *, state: StateFilter = None, operation: str | None = None, after: int | None = None
    ) -> Iterator[JobEvent]:
        """The events of every job this user may see, live, for as long as you iterate:
        ``GET /api/events`` as a stream, with the filters ``state`` and ``operation``, resumed
        after drops like :meth:`watch`. ``after``: start after that ``seq`` (else: from the
        oldest stored event)."""
        return iterate_steps(self.core.events(state=state, operation=operation, after=after), self._io, self._sleep)

    def get(self, job: JobTarget, *, timeout: float | None = None) -> Job:
        """The job as it is now (a standard poll); :class:`~tarefa.client.NotFound` if unknown."""
        return self._drive(self.core.get(job, timeout=timeout))

    def list(
        self,
        *,
        state: StateFilter = None,
        operation: str | None = None,
        max_records: int | None = None,
        order_by: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[Job]:
        """Every job that matches, following ``_links.next.href`` page after page.

        ``state`` is one state or several (``["queued", "running"]``); ``max_records`` is the
        page size; ``order_by`` e.g. ``"create_time desc"``. Pages are fetched as you iterate.
        """
        where: PageRequest | None = self.core.first_page(
            state=state, operation=operation, max_records=max_records, order_by=order_by
        )
        while where is not None:
            page = self._drive(self.core.page(where, timeout=timeout))
            yield from page.jobs
            where = self.core.next_page(page)

    def cancel(self, job: JobTarget, *, timeout: float | None = None) -> Job:
        """Ask the server to cancel the job (``PATCH ...?action=cancel``); returns the job as the
        server answered. A queued job fails at once; a running one is asked to stop — follow it
        with :meth:`wait`. Cancelling a terminal job raises :class:`~tarefa.client.Conflict`."""
        return self._drive(self.core.cancel(job, timeout=timeout))

    def delete(self, job: JobTarget, *, timeout: float | None = None) -> None:
        """Delete a terminal job; :class:`~tarefa.client.Conflict` if it is still running."""
        self._drive(self.core.delete(job, timeout=timeout))

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        idempotency_key: str | bool = False,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Any call (e.g. ``GET /api/hosts``), with the same retries, auth and error mapping.

        An error status raises :class:`~tarefa.client.ApiError`; other answers are returned with
        their body read. Only safe methods are replayed unless an ``idempotency_key`` is sent.
        """
        steps = self.core.request(
            method,
            path,
            json=json,
            params=params,
            headers=headers,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return _as_httpx(self._drive(steps))


def _as_httpx(answer: object) -> httpx.Response:
    assert isinstance(answer, httpx.Response)  # the sync client's answers are httpx's own
    return answer
