"""The store seam: one Protocol that every backend implements, and the values it exchanges.

A store keeps jobs durably and announces every committed change to its listeners. The engine
(runner, HTTP layer) only ever talks to this Protocol; backends live one per module and are
chosen by URL scheme in :func:`tarefa.store.open_store`.

Rules every backend follows (the contract suite in ``tests/integration/test_store_contract.py``
checks them against each backend):

- every method that changes a job applies the pure transitions of :mod:`tarefa.model` and
  commits before it returns; a write method returns only after the commit is durable;
- after each commit, every registered listener is called **on the event loop thread** with the
  :class:`JobChange` values of that commit (deleted jobs carry ``job=None``); for a backend
  shared by several processes (PostgreSQL), every process's listeners hear every change;
- driver exceptions never escape: they become :class:`StoreError` (or a subclass).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from .. import model
from ..model import Job, JobError, JobState


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
class Created:
    """What :meth:`Store.create_job` did: ``created`` is False for a replayed idempotency key,
    in which case ``job`` is the first job *as it is now* and ``answer_status`` the status code
    of the first answer (202, or 200 once :meth:`Store.set_answer_status` recorded it)."""

    job: Job
    created: bool
    answer_status: int = 202


@dataclass(frozen=True, slots=True)
class JobChange:
    """One committed change: the job as it is now, or ``None`` if it was deleted."""

    job_id: str
    job: Job | None


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


class Store(Protocol):
    """The seam between the engine and a database. All methods are coroutines."""

    #: True when this store is used by one process only (embedded SQLite): at start, every job
    #: still ``running`` was left by a crashed process and is recovered at once.
    exclusive: bool

    async def open(self) -> None:
        """Connect, apply schema migrations, and get ready. Idempotent."""

    async def close(self) -> None:
        """Finish pending writes and release connections."""

    async def upgrade(self) -> int:
        """Apply the schema migrations (``tarefa db upgrade``); returns the schema version."""

    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener`` on the event loop with every committed change (see module doc)."""

    # -- jobs ---------------------------------------------------------------------------------

    async def create_job(
        self, job: Job, *, idempotency: Idempotency | None = None, resource_key: str | None = None
    ) -> Created:
        """Insert a ``queued`` job durably, atomically with its checks.

        - idempotency given and ``(job.owner, key)`` seen before: same ``request_hash`` →
          ``Created(existing, created=False, answer_status=...)``; other hash →
          :class:`IdempotencyMismatch`. Nothing is inserted.
        - resource_key given and held by a non-terminal job → :class:`ResourceBusy`.
        """

    async def replay_idempotent(self, owner: str, idempotency: Idempotency) -> Created | None:
        """The job first created with this key by ``owner`` (``Created(job, created=False,
        answer_status=...)``), None if the key is new; :class:`IdempotencyMismatch` if the key
        came with another request. Lets an endpoint replay before it validates again."""

    async def set_answer_status(self, job_id: str, status: int) -> None:
        """Record the status code of the first answer (200 when ``return_timeout`` saw it end)."""

    async def get_job(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or None if unknown or not owned by ``owner`` (None: any owner)."""

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        """Up to ``query.limit`` jobs in order, strictly after ``query.after`` (keyset paging,
        ties on the order value broken by id in the same direction)."""

    async def claim_jobs(
        self, worker: str, *, operations: Collection[str], limit: int, lease_seconds: float
    ) -> list[Job]:
        """Move up to ``limit`` queued jobs of these operations to ``running`` under ``worker``'s
        lease, oldest first. No job is ever claimed by two workers."""

    async def report_progress(
        self, job_id: str, worker: str, *, message: str | None, progress: int | None
    ) -> Job | None:
        """A visible change on a running job held by ``worker``; None if it no longer holds it."""

    async def finish_job(self, job_id: str, worker: str, outcome: Outcome) -> Job | None:
        """running → success/failure; None if ``worker`` no longer holds the job."""

    async def renew_leases(self, worker: str, job_ids: Collection[str], lease_seconds: float) -> set[str]:
        """Extend the leases ``worker`` still holds; returns the ids it still holds."""

    async def release_jobs(self, worker: str, job_ids: Collection[str]) -> list[Job]:
        """Graceful stop: apply :func:`tarefa.model.lose` at once to these jobs held by ``worker``."""

    async def recover_jobs(self, *, expired_only: bool = True) -> list[Job]:
        """Apply :func:`tarefa.model.lose` to running jobs whose lease has expired (or to every
        running job when ``expired_only`` is False). Returns the changed jobs."""

    async def cancel_job(self, job_id: str, owner: str | None = None) -> Job | None:
        """:func:`tarefa.model.request_cancel`; None if unknown; :class:`JobAlreadyTerminal`."""

    async def delete_job(self, job_id: str, owner: str | None = None) -> bool:
        """Delete a terminal job; False if unknown; :class:`JobNotTerminal` if it is not."""

    async def purge_jobs(self, ended_before: datetime) -> int:
        """Delete terminal jobs that ended before the instant; returns how many."""

    # -- application resources (small JSON documents for the applications built on tarefa) -----

    async def put_resource(self, kind: str, key: str, data: dict[str, Any], *, only_if_absent: bool = False) -> bool:
        """Store a document; with ``only_if_absent``, False (and no change) if the key exists."""

    async def get_resource(self, kind: str, key: str) -> dict[str, Any] | None:
        """The document, or None."""

    async def list_resources(self, kind: str) -> list[dict[str, Any]]:
        """Every document of ``kind``, in key order."""

    async def delete_resource(self, kind: str, key: str) -> bool:
        """Delete a document; False if it did not exist."""
