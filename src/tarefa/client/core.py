"""The client's logic, written once, with no I/O: each operation is a generator of effects.

:class:`ClientCore` builds requests, retries them, reads answers, follows jobs and watches their
events, and *yields* effects (:mod:`tarefa.client.drivers`: send a request, read a stream, sleep,
notify, emit an event) for a driver to perform. The synchronous and the asynchronous client are
the same steps run by two drivers. Addresses are resolved once per job, and a poll's URL is built
by joining strings: nothing is parsed per poll.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import orjson

from ..model import JobState
from .answers import Params, add_path, add_query, job_in_answer, next_href, read_job, read_json, with_query
from .config import ClientConfig
from .drivers import (
    Answer,
    ChangeCallback,
    CloseStream,
    Effect,
    Emit,
    HttpCall,
    Notify,
    ReadStream,
    RequestFailure,
    Sleep,
    Steps,
    is_event_stream,
)
from .errors import ApiError, JobFailed, ProtocolError, TransportFailure, WaitTimeout
from .events import JobEvent, SseParser
from .job import Job
from .retry import Deadline, PollPacer, RetryBudget, RetryNotice, describe, retry_after

JobTarget = Job | str
StateFilter = JobState | str | Iterable[JobState | str] | None

MAX_POLL_TIMEOUT = 120
HEARTBEAT = 15.0
"""The longest silence of an event stream (SPEC §10: a comment at least every 15 s while idle);
a stream silent for longer than this plus ``poll_margin`` is taken as dropped and resumed."""
NO_STREAMS = frozenset({404, 405, 406})
"""Answers to a job's event stream that mean "this server has no streams": watch with long polls."""
REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def new_idempotency_key() -> str:
    """A fresh random ``Idempotency-Key`` (a UUID4)."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class PageRequest:
    """The URL and query of one page of a listing."""

    url: str
    params: Params = ()


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a job listing and the link to the next one, if any."""

    jobs: tuple[Job, ...]
    next_href: str | None


class ClientCore:
    """Every client operation as steps; see the module docstring."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.clock = config.clock
        base = urlsplit(config.url)
        self._origin = f"{base.scheme}://{base.netloc}"

    # -- addresses ------------------------------------------------------------------------------

    def resolve(self, path: str) -> str:
        """``path`` (a path, a server's href, or an absolute URL) resolved against the base URL,
        as a browser resolves a link."""
        if path.startswith("/") and not path.startswith("//"):
            return self._origin + path  # the common case: a server's href
        if path.startswith(("http://", "https://")):
            return path
        return urljoin(self.config.url, path)

    def job_url(self, target: JobTarget) -> str:
        """The job's own link if the server gave one, else ``{jobs_path}/{id}``."""
        if isinstance(target, Job) and target.self_href:
            return self.resolve(target.self_href)
        job_id = target.id if isinstance(target, Job) else target
        if not job_id:
            raise ValueError("a job id cannot be empty")
        return self.resolve(f"{self.config.jobs_path.rstrip('/')}/{quote(job_id, safe='')}")

    # -- requests -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | bool = False,
        timeout: float | None = None,
    ) -> Steps[Answer]:
        """Any call, retried when safe; an error status raises :class:`ApiError`."""
        key = _key(idempotency_key)
        all_headers = {**(headers or {}), **({"Idempotency-Key": key} if key else {})}
        return (
            yield from self._call(
                method,
                self.resolve(path),
                json=json,
                params=tuple((params or {}).items()),
                headers=tuple(all_headers.items()),
                deadline=Deadline.after(self.clock, timeout),
                replayable=True if key else None,  # None: the method decides
            )
        )

    def _call(
        self,
        method: str,
        url: str,
        *,
        deadline: Deadline,
        json: Any = None,
        params: Params = (),
        headers: Params = (),
        wait_seconds: float = 0.0,
        replayable: bool | None = None,
        patient: bool = False,
    ) -> Steps[Answer]:
        """One call to the absolute ``url``, retried as :class:`RetryBudget` allows; an error
        status raises :class:`ApiError`.

        ``replayable``: whether the call may be sent again after it may have reached the server;
        by default, whether its method is idempotent.
        """
        method = method.upper()
        if json is not None:
            headers = (*headers, ("Content-Type", "application/json"))
        call = HttpCall(
            method,
            with_query(url, params),
            self.config.read_timeout(wait_seconds),
            self.config.connect_timeout,
            headers=headers,
            content=None if json is None else orjson.dumps(json),
        )
        replay = method in REPLAYABLE_METHODS if replayable is None else replayable
        response = yield from self._send(call, deadline, replay, patient)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def _send(self, call: HttpCall, deadline: Deadline, replayable: bool, patient: bool) -> Steps[Answer]:
        """Send ``call`` until an answer that is not retried, or until the retry budget is spent.

        A ``patient`` call (the polls of :meth:`wait`) rides out outages until the caller's
        deadline; the others give up after ``retry_for`` seconds of outage.
        """
        config = self.config
        retry_for = None if patient else config.retry_for
        budget: RetryBudget | None = None
        while True:
            outcome = yield from _attempt(call)
            if type(outcome) is not RequestFailure and outcome.status_code < 400:  # type: ignore[union-attr]
                return outcome  # type: ignore[return-value]
            if budget is None:
                budget = RetryBudget(config.backoff, config.random, config.clock, deadline, retry_for, replayable)
            delay = budget.delay_after(outcome)
            if delay is None:
                break
            if config.on_retry is not None:
                notice = RetryNotice(call.method, call.url, describe(outcome), budget.attempts, delay)
                yield Notify(config.on_retry, notice)
            yield Sleep(delay)
        if isinstance(outcome, RequestFailure):
            tries = f" (gave up after {budget.attempts} attempts)" if budget.attempts > 1 else ""
            raise TransportFailure(
                f"{call.method} {call.url} failed: {outcome.reason}{tries}",
                url=call.url,
                attempts=budget.attempts,
                cause=outcome.cause,
            ) from outcome.cause
        return outcome

    # -- jobs -----------------------------------------------------------------------------------

    def submit(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        idempotency_key: str | bool = True,
        return_timeout: int | None = None,
        timeout: float | None = None,
    ) -> Steps[Job]:
        """Start an asynchronous call and return its job (see :meth:`Client.submit`)."""
        deadline = Deadline.after(self.clock, timeout)
        return (yield from self._submit(method, path, json, idempotency_key, return_timeout, deadline))

    def _submit(
        self,
        method: str,
        path: str,
        json: Any,
        idempotency_key: str | bool,
        return_timeout: int | None,
        deadline: Deadline,
    ) -> Steps[Job]:
        key = _key(idempotency_key)
        url = self.resolve(path)
        try:
            response = yield from self._call(
                method,
                url,
                json=json,
                params=(("return_timeout", str(return_timeout)),) if return_timeout else (),
                headers=(("Idempotency-Key", key),) if key else (),
                wait_seconds=float(return_timeout or 0),
                deadline=deadline,
                replayable=True if key else None,  # None: the method decides
            )
        except ApiError as refused:
            if not (return_timeout and refused.status == 400 and refused.target == "return_timeout"):
                raise
            return (yield from self._submit(method, path, json, key or False, None, deadline))
        job = job_in_answer(response)
        if job is None:
            raise ProtocolError(f"{method.upper()} {path} answered {response.status_code} without a job")
        return job

    def get(self, target: JobTarget, *, timeout: float | None = None) -> Steps[Job]:
        """The job as it is now (a standard poll)."""
        return (yield from self._get(self.job_url(target), Deadline.after(self.clock, timeout)))

    def _get(self, url: str, deadline: Deadline, *, patient: bool = False) -> Steps[Job]:  # url: absolute
        response = yield from self._call("GET", url, deadline=deadline, patient=patient)
        return read_job(response, "GET", url)

    def wait(
        self,
        target: JobTarget,
        *,
        timeout: float | None = None,
        poll_timeout: int = MAX_POLL_TIMEOUT,
        on_change: ChangeCallback | None = None,
    ) -> Steps[Job]:
        """Follow the job with long polls until it is terminal (see :meth:`Client.wait`)."""
        follow = self._following(timeout, poll_timeout, _notifier(on_change))
        return (yield from self._wait(target, follow))

    def _following(self, timeout: float | None, poll_timeout: int, report: Reporter | None) -> _Following:
        deadline = Deadline.after(self.clock, timeout)
        return _Following(deadline, timeout, _poll_seconds(poll_timeout), report)

    def _wait(self, target: JobTarget, follow: _Following) -> Steps[Job]:
        url = self.job_url(target)
        if isinstance(target, Job) and target.is_complete:
            job = target
        else:
            job = yield from self._get(url, follow.deadline, patient=True)
        if follow.report is not None:
            yield follow.report(job)
        pacer = PollPacer(self.config.backoff, self.config.random)
        while not job.is_terminal:
            job = yield from self._poll_once(url, job, follow, pacer)
        return job

    def _poll_once(self, url: str, job: Job, follow: _Following, pacer: PollPacer) -> Steps[Job]:
        """One long poll, the change callback if the job changed, and a pause if the answer was
        early and empty (a server that does not hold long polls)."""
        remaining = follow.deadline.remaining(self.clock)
        if remaining <= 0:
            raise WaitTimeout(job, follow.timeout or 0.0)
        seconds = follow.poll_timeout if remaining >= follow.poll_timeout else max(1, math.ceil(remaining))
        query = f"poll_timeout={seconds}"
        if job.last_modified_text is not None:
            query += "&last_modified=" + quote(job.last_modified_text, safe="")
        started = self.clock()
        response = yield from self._call(
            "GET", add_query(url, query), deadline=follow.deadline, wait_seconds=seconds, patient=True
        )
        latest = read_job(response, "GET", url)
        changed = latest.differs_from(job)
        if changed and follow.report is not None:
            yield follow.report(latest)
        elapsed = self.clock() - started
        pause = pacer.pause_after(changed=changed, elapsed=elapsed, poll_timeout=seconds, hint=retry_after(response))
        pause = min(pause, follow.deadline.remaining(self.clock))
        if pause > 0 and not latest.is_terminal:
            yield Sleep(pause)
        return latest

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
    ) -> Steps[Job]:
        """Submit, then wait for the terminal job (see :meth:`Client.run`).

        Without ``on_change``, the submit asks the server to hold its answer until the job ends
        (``return_timeout``, up to ``poll_timeout`` seconds): a job that ends in time costs one
        request; otherwise the answer is the usual ``202`` and long polls follow."""
        follow = self._following(timeout, poll_timeout, _notifier(on_change))
        held = None if on_change is not None else _held_seconds(follow, self.clock)
        job = yield from self._submit(method, path, json, idempotency_key, held, follow.deadline)
        if not job.is_terminal or not job.is_complete:
            job = yield from self._wait(job, follow)
        if raise_on_failure and job.state is JobState.FAILURE:
            raise JobFailed(job)
        return job

    def cancel(self, target: JobTarget, *, timeout: float | None = None) -> Steps[Job]:
        """Ask the server to cancel the job; returns the job as the server answered it."""
        url = self.job_url(target)
        deadline = Deadline.after(self.clock, timeout)
        response = yield from self._call("PATCH", add_query(url, "action=cancel"), deadline=deadline, replayable=True)
        return read_job(response, "PATCH", url)

    def delete(self, target: JobTarget, *, timeout: float | None = None) -> Steps[None]:
        """Delete a terminal job."""
        yield from self._call("DELETE", self.job_url(target), deadline=Deadline.after(self.clock, timeout))

    # -- events ---------------------------------------------------------------------------------

    def watch(
        self,
        target: JobTarget,
        *,
        after: int | None = None,
        timeout: float | None = None,
        poll_timeout: int = MAX_POLL_TIMEOUT,
    ) -> Steps[None]:
        """Emit the job's events until its terminal one (see :meth:`Client.watch`)."""
        deadline = Deadline.after(self.clock, timeout)
        cursor = _Cursor(after, _job_id(target))
        url = add_path(self.job_url(target), "events")
        if (yield from self._stream(url, cursor, deadline, timeout, per_job=True)):
            return
        follow = _Following(deadline, timeout, _poll_seconds(poll_timeout), _emit_event)
        yield from self._wait(target, follow)

    def events(
        self, *, state: StateFilter = None, operation: str | None = None, after: int | None = None
    ) -> Steps[None]:
        """Emit the events of every job the caller may see, for ever (see :meth:`Client.events`)."""
        wanted = (("state", _states(state)), ("operation", operation))
        url = with_query(self.resolve(self.events_path), tuple((k, v) for k, v in wanted if v))
        if not (yield from self._stream(url, _Cursor(after, None), Deadline(None), None, per_job=False)):
            raise ProtocolError(f"GET {url} is not an event stream: the server has no /events stream")

    @property
    def events_path(self) -> str:
        """Where the stream of all events is: ``events`` beside the jobs collection."""
        return self.config.jobs_path.rstrip("/").rpartition("/")[0] + "/events"

    def _stream(
        self, url: str, cursor: _Cursor, deadline: Deadline, timeout: float | None, *, per_job: bool
    ) -> Steps[bool]:
        """Follow an event stream, resuming it after each drop with ``Last-Event-ID``, until a
        per-job stream's terminal event (``True``); ``False`` when there is no stream here."""
        stalls = 0
        while True:
            if deadline.remaining(self.clock) <= 0:
                raise WaitTimeout(cursor.job(), timeout or 0.0)
            answer = yield from self._send(self._stream_call(url, cursor), deadline, True, True)
            if answer.status_code == 204:
                return True  # nothing after Last-Event-ID, and nothing will come (the job has ended)
            if answer.status_code != 200 or not is_event_stream(answer.headers):
                if per_job and (answer.status_code in NO_STREAMS or answer.status_code < 300):
                    return False
                if answer.status_code >= 400:
                    raise ApiError.from_response(answer)
                return False
            progressed, ended = yield from self._read_stream(answer, cursor, per_job)
            if ended:
                return True
            stalls = 0 if progressed else stalls + 1
            if stalls:
                pause = self.config.backoff.delay(stalls - 1, self.config.random)
                yield Sleep(min(pause, max(0.0, deadline.remaining(self.clock))))

    def _stream_call(self, url: str, cursor: _Cursor) -> HttpCall:
        headers: Params = (("Accept", "text/event-stream"),)
        if cursor.seq is not None:
            headers += (("Last-Event-ID", str(cursor.seq)),)
        read = self.config.read_timeout(HEARTBEAT)
        return HttpCall("GET", url, read, self.config.connect_timeout, headers=headers, stream=True)

    def _read_stream(self, stream: Answer, cursor: _Cursor, per_job: bool) -> Steps[tuple[bool, bool]]:
        """Emit each new event of an open stream until it ends or drops: (any new event, ended)."""
        parser = SseParser()
        progressed = False
        try:
            while chunk := (yield ReadStream(stream)):
                for message in parser.feed(chunk):
                    if message.event not in ("job", "message"):
                        continue
                    event = JobEvent.from_message(message)
                    if cursor.seq is not None and event.seq is not None and event.seq <= cursor.seq:
                        continue  # seen before the stream was resumed
                    cursor.advance(event)
                    progressed = True
                    yield Emit(event)
                    if per_job and event.is_terminal:
                        yield CloseStream(stream)
                        return progressed, True
        except RequestFailure:
            pass  # dropped: the caller resumes it
        yield CloseStream(stream)
        return progressed, False

    def first_page(
        self,
        *,
        state: StateFilter = None,
        operation: str | None = None,
        max_records: int | None = None,
        order_by: str | None = None,
    ) -> PageRequest:
        """Where the first page of a job listing is."""
        wanted = {
            "state": _states(state),
            "operation": operation,
            "max_records": None if max_records is None else str(max_records),
            "order_by": order_by,
        }
        params = tuple((name, value) for name, value in wanted.items() if value)
        return PageRequest(self.resolve(self.config.jobs_path), params)

    def next_page(self, page: JobPage) -> PageRequest | None:
        """Where the page after ``page`` is (its ``_links.next.href``), or ``None`` after the last."""
        return PageRequest(self.resolve(page.next_href)) if page.next_href else None

    def page(self, where: PageRequest, *, timeout: float | None = None) -> Steps[JobPage]:
        """One page of a listing: its jobs and the next page's href."""
        deadline = Deadline.after(self.clock, timeout)
        response = yield from self._call("GET", where.url, params=where.params, deadline=deadline)
        body = read_json(response, f"GET {where.url}")
        records = body.get("records") if isinstance(body, Mapping) else None
        if not isinstance(records, list):
            raise ProtocolError(f"GET {where.url} answered {response.status_code} without a records list")
        return JobPage(tuple(Job.from_wire(record) for record in records), next_href(body))


@dataclass(frozen=True, slots=True)
class _Following:
    deadline: Deadline
    timeout: float | None
    poll_timeout: int
    report: Reporter | None


@dataclass(slots=True)
class _Cursor:
    """Where a watch is: the last event's ``seq`` (resume after it) and what it said."""

    seq: int | None
    job_id: str | None
    last: JobEvent | None = None

    def advance(self, event: JobEvent) -> None:
        self.seq = event.seq if event.seq is not None else self.seq
        self.last = event

    def job(self) -> Job:
        """The job as the last event described it (what a :class:`WaitTimeout` carries)."""
        event = self.last
        if event is None:
            return Job(id=self.job_id or "", state=JobState.QUEUED)
        return Job(event.job_id, event.state, message=event.message, progress=event.progress,
                   last_modified_text=event.time_text, error=event.error)  # fmt: skip


def _emit_event(job: Job) -> Effect:
    return Emit(JobEvent.from_job(job))


def _job_id(target: JobTarget) -> str:
    return target.id if isinstance(target, Job) else target


Reporter = Callable[[Job], Effect]
"""How a wait reports a new version of its job: a :class:`Notify` of the caller's callback, or
an :class:`Emit` of an event (``watch`` against a server without streams)."""


def _notifier(on_change: ChangeCallback | None) -> Reporter | None:
    return None if on_change is None else functools.partial(Notify, on_change)


def _held_seconds(follow: _Following, clock: Callable[[], float]) -> int | None:
    """How long ``run`` asks the server to hold its submit: the poll time, within the deadline."""
    remaining = follow.deadline.remaining(clock)
    seconds = follow.poll_timeout if remaining >= follow.poll_timeout else math.floor(remaining)
    return seconds if seconds >= 1 else None


def _attempt(call: HttpCall) -> Steps[Answer | RequestFailure]:
    try:
        response: Answer = yield call
    except RequestFailure as failure:
        return failure
    return response


def _key(idempotency_key: str | bool) -> str | None:
    if idempotency_key is True:
        return new_idempotency_key()
    return idempotency_key or None


def _poll_seconds(poll_timeout: int) -> int:
    if not 1 <= poll_timeout <= MAX_POLL_TIMEOUT:
        raise ValueError(f"poll_timeout must be between 1 and {MAX_POLL_TIMEOUT} seconds, not {poll_timeout}")
    return int(poll_timeout)


def _states(state: StateFilter) -> str | None:
    if state is None:
        return None
    if isinstance(state, str):
        return str(state)
    return "|".join(str(JobState(value)) for value in state)
