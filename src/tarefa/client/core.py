"""The client's logic, written once, with no I/O: each operation is a generator of effects.

:class:`ClientCore` builds requests, retries them, reads answers and follows jobs, and *yields*
:class:`~tarefa.client.drivers.HttpCall`, :class:`~tarefa.client.drivers.Sleep` and
:class:`~tarefa.client.drivers.Notify` effects for a driver to perform. The synchronous and the
asynchronous client are the same steps run by two drivers (see :mod:`tarefa.client.drivers`).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ..model import JobState
from .config import ClientConfig
from .drivers import ChangeCallback, HttpCall, Notify, Sleep, Steps
from .errors import ApiError, JobFailed, ProtocolError, TransportFailure, WaitTimeout
from .job import Job
from .retry import Deadline, PollPacer, RetryBudget, RetryNotice, describe, retry_after

Params = tuple[tuple[str, str], ...]
JobTarget = Job | str
StateFilter = JobState | str | Iterable[JobState | str] | None

MAX_POLL_TIMEOUT = 120
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

    # -- addresses ------------------------------------------------------------------------------

    def resolve(self, path: str) -> str:
        """``path`` (a path, a server's href, or an absolute URL) resolved against the base URL."""
        return str(self.config.url.join(path))

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
    ) -> Steps[httpx.Response]:
        """Any call, retried when safe; an error status raises :class:`ApiError`."""
        key = _key(idempotency_key)
        all_headers = {**(headers or {}), **({"Idempotency-Key": key} if key else {})}
        return (
            yield from self._call(
                method,
                path,
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
        path: str,
        *,
        deadline: Deadline,
        json: Any = None,
        params: Params = (),
        headers: Params = (),
        wait_seconds: float = 0.0,
        replayable: bool | None = None,
        patient: bool = False,
    ) -> Steps[httpx.Response]:
        """One call, retried as :class:`RetryBudget` allows; an error status raises :class:`ApiError`.

        ``replayable``: whether the call may be sent again after it may have reached the server;
        by default, whether its method is idempotent.
        """
        method = method.upper()
        if json is not None:
            headers = (*headers, ("Content-Type", "application/json"))
        url = httpx.URL(self.resolve(path))
        call = HttpCall(
            method,
            str(url.copy_merge_params(list(params)) if params else url),
            self.config.timeout(wait_seconds),
            headers=headers,
            content=None if json is None else orjson.dumps(json),
        )
        replay = method in REPLAYABLE_METHODS if replayable is None else replayable
        response = yield from self._send(call, deadline, replay, patient)
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def _send(self, call: HttpCall, deadline: Deadline, replayable: bool, patient: bool) -> Steps[httpx.Response]:
        """Send ``call`` until an answer that is not retried, or until the retry budget is spent.

        A ``patient`` call (the polls of :meth:`wait`) rides out outages until the caller's
        deadline; the others give up after ``retry_for`` seconds of outage.
        """
        config = self.config
        retry_for = None if patient else config.retry_for
        budget = RetryBudget(config.backoff, config.random, config.clock, deadline, retry_for, replayable)
        while True:
            outcome = yield from _attempt(call)
            delay = budget.delay_after(outcome)
            if delay is None:
                break
            if config.on_retry is not None:
                notice = RetryNotice(call.method, call.url, describe(outcome), budget.attempts, delay)
                yield Notify(config.on_retry, notice)
            yield Sleep(delay)
        if isinstance(outcome, httpx.RequestError):
            tries = f" (gave up after {budget.attempts} attempts)" if budget.attempts > 1 else ""
            raise TransportFailure(
                f"{call.method} {call.url} failed: {describe(outcome)}{tries}",
                url=call.url,
                attempts=budget.attempts,
                cause=outcome,
            ) from outcome
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
        response = yield from self._call(
            method,
            path,
            json=json,
            params=(("return_timeout", str(return_timeout)),) if return_timeout else (),
            headers=(("Idempotency-Key", key),) if key else (),
            wait_seconds=float(return_timeout or 0),
            deadline=deadline,
            replayable=True if key else None,  # None: the method decides
        )
        job = job_in_answer(response)
        if job is None:
            raise ProtocolError(f"{method.upper()} {path} answered {response.status_code} without a job")
        return job

    def get(self, target: JobTarget, *, timeout: float | None = None) -> Steps[Job]:
        """The job as it is now (a standard poll)."""
        return (yield from self._get(self.job_url(target), Deadline.after(self.clock, timeout)))

    def _get(self, url: str, deadline: Deadline, *, patient: bool = False) -> Steps[Job]:
        response = yield from self._call("GET", url, deadline=deadline, patient=patient)
        return _read_job(response, "GET", url)

    def wait(
        self,
        target: JobTarget,
        *,
        timeout: float | None = None,
        poll_timeout: int = MAX_POLL_TIMEOUT,
        on_change: ChangeCallback | None = None,
    ) -> Steps[Job]:
        """Follow the job with long polls until it is terminal (see :meth:`Client.wait`)."""
        follow = self._following(timeout, poll_timeout, on_change)
        return (yield from self._wait(target, follow))

    def _following(self, timeout: float | None, poll_timeout: int, on_change: ChangeCallback | None) -> _Following:
        deadline = Deadline.after(self.clock, timeout)
        return _Following(deadline, timeout, _poll_seconds(poll_timeout), on_change)

    def _wait(self, target: JobTarget, follow: _Following) -> Steps[Job]:
        url = self.job_url(target)
        if isinstance(target, Job) and target.is_complete:
            job = target
        else:
            job = yield from self._get(url, follow.deadline, patient=True)
        if follow.on_change is not None:
            yield Notify(follow.on_change, job)
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
        params: Params = (("poll_timeout", str(seconds)),)
        if job.last_modified_text is not None:
            params += (("last_modified", job.last_modified_text),)
        started = self.clock()
        response = yield from self._call(
            "GET", url, params=params, deadline=follow.deadline, wait_seconds=seconds, patient=True
        )
        latest = _read_job(response, "GET", url)
        changed = latest.differs_from(job)
        if changed and follow.on_change is not None:
            yield Notify(follow.on_change, latest)
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
        """Submit, then wait for the terminal job (see :meth:`Client.run`)."""
        follow = self._following(timeout, poll_timeout, on_change)
        job = yield from self._submit(method, path, json, idempotency_key, None, follow.deadline)
        job = yield from self._wait(job, follow)
        if raise_on_failure and job.state is JobState.FAILURE:
            raise JobFailed(job)
        return job

    def cancel(self, target: JobTarget, *, timeout: float | None = None) -> Steps[Job]:
        """Ask the server to cancel the job; returns the job as the server answered it."""
        url = self.job_url(target)
        deadline = Deadline.after(self.clock, timeout)
        response = yield from self._call(
            "PATCH", url, params=(("action", "cancel"),), deadline=deadline, replayable=True
        )
        return _read_job(response, "PATCH", url)

    def delete(self, target: JobTarget, *, timeout: float | None = None) -> Steps[None]:
        """Delete a terminal job."""
        yield from self._call("DELETE", self.job_url(target), deadline=Deadline.after(self.clock, timeout))

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
        body = _json(response)
        records = body.get("records") if isinstance(body, Mapping) else None
        if not isinstance(records, list):
            raise ProtocolError(f"GET {where.url} answered {response.status_code} without a records list")
        return JobPage(tuple(Job.from_wire(record) for record in records), _next_href(body))


@dataclass(frozen=True, slots=True)
class _Following:
    deadline: Deadline
    timeout: float | None
    poll_timeout: int
    on_change: ChangeCallback | None


def _attempt(call: HttpCall) -> Steps[httpx.Response | httpx.RequestError]:
    try:
        response: httpx.Response = yield call
    except httpx.RequestError as exc:
        return exc
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


def _json(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise ProtocolError(
            f"{response.request.method} {response.request.url} answered {response.status_code} "
            "with a body that is not JSON"
        ) from None


def job_in_answer(response: httpx.Response) -> Job | None:
    """The job in an answer to a call: ``{"job": ...}``, or a bare job in a ``202``; else ``None``."""
    body = _json(response)
    location = response.headers.get("location")
    if not isinstance(body, Mapping):
        return None
    if "job" in body:
        return Job.from_wire(body["job"], location=location)
    if response.status_code == 202 and "id" in body:
        return Job.from_wire(body, location=location)
    return None


def _read_job(response: httpx.Response, method: str, url: str) -> Job:
    """The job in ``{"record": ...}``, ``{"job": ...}`` or a bare job body."""
    body = _json(response)
    if isinstance(body, Mapping):
        for envelope in ("record", "job"):
            if envelope in body:
                return Job.from_wire(body[envelope], location=response.headers.get("location"))
        if "id" in body:
            return Job.from_wire(body)
    raise ProtocolError(f"{method} {url} answered {response.status_code} without a job")


def _next_href(body: Mapping[str, Any]) -> str | None:
    links = body.get("_links")
    following = links.get("next") if isinstance(links, Mapping) else None
    href = following.get("href") if isinstance(following, Mapping) else None
    return href if isinstance(href, str) and href else None
