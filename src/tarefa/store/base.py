"""The values and errors the store seam exchanges, and the fan-out of committed changes.

The seam itself is :class:`tarefa.store.jobstore.JobStore` (the job rules, written once) over
each backend's primitive steps (:mod:`tarefa.store.steps`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .. import model
from ..model import Job, JobError, JobEvent, JobState

log = logging.getLogger("tarefa.store")


class StoreError(Exception):
    """The store failed (I/O, connection, corruption). The operation may not have happened."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; retrying later may succeed."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer tarefa; this version refuses to touch it."""


class ResourceBusy(Exception):
    """Another non-terminal job holds the resource key (SPEC §2 → 409)."""

    def __init__(self, resource_key: str, job_id: str) -> None:
        super().__init__(f"resource {resource_key!r} is busy with job {job_id}")
        self.resource_key = resource_key
        self.job_id = job_id


class IdempotencyMismatch(Exception):
    """The idempotency key was used before with a different request (SPEC §2 → 422)."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(f"idempotency key {key!r} was used for another request (job {job_id})")
        self.key = key
        self.job_id = job_id


class JobNotTerminal(Exception):
    """Deleting a job that is still queued or running (SPEC §4 → 409)."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is {job.state.value}")
        self.job = job


class JobAlreadyTerminal(Exception):
    """Cancelling a job that has ended (SPEC §4 → 409)."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is already {job.state.value}")
        self.job = job


@dataclass(frozen=True, slots=True)
class Idempotency:
    """An ``Idempotency-Key`` with the fingerprint of the request that carried it."""

    key: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class Precondition:
    """A check on an application document that must hold when a job is created, in the same
    transaction: ``check(document)`` (the document or None) raises to refuse the job. It runs
    inside the store's transaction (on its writer thread, for SQLite): keep it quick and pure."""

    kind: str
    key: str
    check: Callable[[dict[str, Any] | None], None]


@dataclass(frozen=True, slots=True)
class Created:
    """What :meth:`Store.create_job` did: ``created`` is False for a replayed idempotency key,
    in which case ``job`` is the first job *as it is now* and ``answer_status`` the status code
    of the first answer (202, or 200 once :meth:`Store.set_answer_status` recorded it)."""

    job: Job
    created: bool
    answer_status: int = 202
    #: The job as claimed in the same transaction (``create_job(..., claim=...)``), else None.
    claimed: Job | None = None
    #: Until when an end of the new job records 200 by itself (:meth:`tarefa.jobs.Jobs.start`).
    answer_by: datetime | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """Claim the new job in its insert's transaction: ``worker`` holds it for ``lease_seconds``
    from the commit on; the claim is as durable as the insert, before the operation runs."""

    worker: str
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class JobChange:
    """One committed change: the job as it is now (``None`` if it was deleted), and the event
    that records it in the job's history (``None`` for a deletion). ``key``: the Idempotency-Key
    an insert stored, if any (announced to other processes; not compared)."""

    job_id: str
    job: Job | None
    event: JobEvent | None = None
    key: str | None = field(default=None, compare=False)


ChangeListener = Callable[[Sequence[JobChange]], None]

OrderField = Literal["create_time", "last_modified"]


@dataclass(frozen=True, slots=True)
class JobQuery:
    """A page of jobs. ``after`` is the (order value, id) of the last job of the previous page."""

    owner: str | None = None  # None: every owner's jobs
    states: frozenset[JobState] = frozenset()  # empty: any state
    operation: str | None = None
    order_by: OrderField = "create_time"
    descending: bool = True
    limit: int = 100
    after: tuple[datetime, str] | None = None


@dataclass(frozen=True, slots=True)
class EventQuery:
    """A page of the events of every job (``GET /api/events``), oldest first, ``seq > after``."""

    owner: str | None = None  # None: every owner's jobs
    states: frozenset[JobState] = frozenset()  # the event's state; empty: any
    operation: str | None = None
    after: int = 0
    limit: int = 100

    def shows(self, event: JobEvent) -> bool:
        """True if the event is one this query asks for (whatever its ``seq``)."""
        return (
            (self.owner is None or event.owner == self.owner)
            and (not self.states or event.state in self.states)
            and (self.operation is None or event.operation == self.operation)
        )


@dataclass(frozen=True, slots=True)
class EventPage:
    """What :meth:`JobStore.list_all_events` found: the events, and ``covered``: the ``seq`` up
    to which the store holds no other event the query shows, now or ever (every transaction that
    could still commit one below it has ended). A reader resumes after ``covered``, not after
    the last event: what lies between matched no filter."""

    events: list[JobEvent]
    covered: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a running job ended: ``result`` on success, ``error`` on failure."""

    state: Literal[JobState.SUCCESS, JobState.FAILURE]
    result: Any = None
    error_code: str = ""
    error_message: str = ""
    message: str | None = None


def apply_outcome(job: Job, outcome: Outcome, *, now: datetime) -> Job:
    """Apply an :class:`Outcome` to a running job with the pure transitions (every backend)."""
    if outcome.state is JobState.SUCCESS:
        return model.succeed(job, now=now, result=outcome.result, message=outcome.message)
    return model.fail(job, now=now, error=JobError(outcome.error_code, outcome.error_message))


class Listeners:
    """The listeners of one store. A listener that raises is logged and skipped: it can neither
    stop the others from hearing a change nor hold up the write that made it."""

    def __init__(self) -> None:
        self._listeners: list[ChangeListener] = []

    def add(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def emit(self, changes: Sequence[JobChange]) -> None:
        if not changes:
            return
        for listener in tuple(self._listeners):
            try:
                listener(changes)
            except Exception:
                log.exception("a job change listener failed (the change is committed; other listeners heard it)")
