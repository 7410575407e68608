"""The store seam: :class:`JobStore`, the job rules written once over each backend's steps.

A store keeps jobs durably and announces every committed change to its listeners. Each rule —
load, check, apply a pure transition of :mod:`tarefa.model`, save, announce — is a program of
primitive steps (:mod:`tarefa.store.steps`); a backend (one module each, chosen by URL scheme in
:func:`tarefa.store.open_store`) runs a program in one transaction and does each step its own way.

What every backend promises (the contract suite in ``tests/integration/test_store_contract.py``
checks each one):

- a write method returns only after its transaction has committed (durably, but for the memory
  store); every visible change is saved with an event of the job's history, in the same
  transaction;
- after each commit, every listener is called **on the event loop thread** with the
  :class:`~tarefa.store.JobChange` values of that commit (deleted jobs carry ``job=None``); a
  listener that raises is logged and neither blocks nor loses a write; for a store shared by
  several processes (PostgreSQL), every process's listeners hear every change;
- driver exceptions never escape: they become :class:`~tarefa.store.StoreError` (or a subclass).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from .. import model
from ..model import Job, JobEvent, JobState
from . import steps
from .base import (
    ChangeListener,
    Claim,
    Created,
    EventPage,
    EventQuery,
    Idempotency,
    IdempotencyMismatch,
    JobAlreadyTerminal,
    JobNotTerminal,
    JobQuery,
    Listeners,
    Outcome,
    Precondition,
    ResourceBusy,
    StoreError,
    apply_outcome,
)
from .documents import Documents
from .outbox import CallbackAttempt, CallbackDelivery, deliveries_for
from .steps import Program

T = TypeVar("T")
#: Jobs deleted per transaction by :meth:`JobStore.purge_jobs`.
PURGE_BATCH = 1000
_CREATE_ATTEMPTS = 5
#: Most running jobs whose claimed version a store remembers for their end (:meth:`JobStore.finish_job`).
HELD_JOBS_KEPT = 10_000


class JobStore(ABC):
    """The seam between the engine and a database (module doc). All methods are coroutines."""

    #: True when this store is used by one process only (embedded SQLite, memory): at start,
    #: every job still ``running`` was left by a crashed process and is recovered at once.
    exclusive: bool = False
    #: True when an end records ``200`` as the first answer's status by itself when it comes
    #: before the ``answer_by`` given to :meth:`create_job` (a call answered in another process
    #: than the job's end then needs no write of its own).
    records_answers_by: bool = False

    def __init__(self) -> None:
        self._listeners = Listeners()
        self._held: dict[str, Job] = {}  # running jobs claimed here, as last saved here

    # -- what a backend provides ----------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect, apply schema migrations, and get ready. Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release connections."""

    @abstractmethod
    async def upgrade(self) -> int:
        """Apply the schema migrations (``tarefa db upgrade``); returns the schema version."""

    @abstractmethod
    async def _write(self, program: Callable[[], Program[T]]) -> T:
        """Run the program ``program()`` makes in one transaction; once committed, announce its
        changes (:meth:`_emit`) and return its value. If it raises, nothing of it is kept. A
        backend may run it again (a new program each time) when a transaction must be retried."""

    @abstractmethod
    async def _read(self, program: Callable[[], Program[T]]) -> T:
        """Run a program of reads."""

    @property
    @abstractmethod
    def documents(self) -> Documents:
        """The application's records kept beside the jobs (:mod:`tarefa.store.documents`)."""

    # -- listeners --------------------------------------------------------------------------------

    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener`` on the event loop with every committed change (module doc)."""
        self._listeners.add(listener)

    def _emit(self, changes: Any) -> None:
        self._listeners.emit(changes)

    # -- creating ---------------------------------------------------------------------------------

    async def create_job(
        self,
        job: Job,
        *,
        idempotency: Idempotency | None = None,
        resource_key: str | None = None,
        precondition: Precondition | None = None,
        claim: Claim | None = None,
        answer_by: datetime | None = None,
    ) -> Created:
        """Insert a ``queued`` job durably, atomically with its checks.

        - idempotency given and ``(job.owner, key)`` seen before: same ``request_hash`` →
          ``Created(existing, created=False, answer_status=...)``; other hash →
          :class:`IdempotencyMismatch`. Nothing is inserted.
        - resource_key given and held by a non-terminal job → :class:`ResourceBusy`.
        - precondition given: its check runs on the document, locked, in the same transaction;
          what it raises is raised here, and nothing is inserted.
        - claim given: the inserted job is also claimed (``running`` under the claim's lease) in
          the same transaction, as :meth:`claim_jobs` would (``Created.claimed``): a fast job's
          accept and claim share one commit.
        - answer_by given (only where :attr:`records_answers_by`): an end of the job up to that
          instant records ``200`` as the first answer's status (:meth:`set_answer_status` says it
          for good). The call holding its answer till then needs no write when it answers ``200``.
        """
        if answer_by is not None and not self.records_answers_by:
            raise ValueError(f"{type(self).__name__} does not record answers by their end: answer_by must be None")
        created = await self._write(lambda: _create(job, idempotency, resource_key, precondition, claim, answer_by))
        if created.claimed is not None:
            self._remember(created.claimed)
        return created

    async def insert_documents(self, documents: Sequence[tuple[str, str, dict[str, Any]]]) -> bool:
        """Insert every ``(kind, key, data)``, in one transaction, or none of them (False) if any
        key exists already: a claim of several names at once that two callers cannot share."""
        return bool(await self._write(lambda: _one(steps.InsertDocuments(tuple(documents)))))

    async def replay_idempotent(self, owner: str, idempotency: Idempotency) -> Created | None:
        """The job first created with this key by ``owner`` (``Created(job, created=False,
        answer_status=...)``), None if the key is new; :class:`IdempotencyMismatch` if the key
        came with another request. Lets an endpoint replay before it validates again."""
        return await self._read(lambda: _replay(owner, idempotency))

    async def set_answer_status(self, job_id: str, status: int) -> None:
        """Record the status code of the first answer (200 when ``return_timeout`` saw it end)."""
        await self._write(lambda: _one(steps.SetAnswerStatus(job_id, status)))

    # -- reading ----------------------------------------------------------------------------------

    async def get_job(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or None if unknown or not owned by ``owner`` (None: any owner)."""
        job: Job | None = await self._read(lambda: _one(steps.LoadJob(job_id, owner)))
        return job

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        """Up to ``query.limit`` jobs in order, strictly after ``query.after`` (keyset paging,
        ties on the order value broken by id in the same direction)."""
        jobs: list[Job] = await self._read(lambda: _one(steps.ListJobs(query)))
        return jobs

    async def list_events(
        self, job_id: str, *, owner: str | None = None, after: int = 0, limit: int = 100
    ) -> list[JobEvent] | None:
        """The job's history, oldest first: up to ``limit`` events with ``seq > after``; None if
        the job is unknown or not owned by ``owner``."""
        return await self._read(lambda: _history(job_id, owner, after, limit))

    async def list_all_events(self, query: EventQuery) -> EventPage:
        """The events of every job ``query`` shows, oldest first, ``seq > query.after``: never
        one that a transaction still in flight could later commit below one returned, so that
        a reader resuming after :attr:`EventPage.covered` misses nothing and repeats nothing,
        on a store whose concurrent transactions commit out of ``seq`` order too."""
        return await self._read(lambda: _all_events(query))

    async def count_jobs(self) -> dict[tuple[str, str], int]:
        """How many jobs the store holds per ``(state, operation)``, in one query."""
        counts: dict[tuple[str, str], int] = await self._read(lambda: _one(steps.CountJobs()))
        return counts

    async def check_ready(self) -> None:
        """Return if the store answers and its schema is the one this tarefa knows; else raise
        :class:`~tarefa.store.StoreError` (:class:`~tarefa.store.StoreUnavailable` if unreachable)."""
        found, known = await self._read(lambda: _one(steps.ReadSchemaVersion()))
        if found != known:
            raise StoreError(
                f"the store's schema is at version {found}, this tarefa needs {known}: run 'tarefa db upgrade'"
            )

    async def count_queued(self) -> int:
        """How many jobs are queued (in every process's view: the store's count)."""
        count: int = await self._read(lambda: _one(steps.CountQueued()))
        return count

    # -- running ----------------------------------------------------------------------------------

    async def claim_jobs(
        self, worker: str, *, operations: Collection[str], limit: int, lease_seconds: float
    ) -> list[Job]:
        """Move up to ``limit`` queued jobs of these operations to ``running`` under ``worker``'s
        lease, oldest first. No job is ever claimed by two workers."""
        if not operations or limit <= 0:
            return []
        claimed = await self._write(lambda: _claim(worker, tuple(operations), limit, lease_seconds))
        for job in claimed:
            self._remember(job)
        return claimed

    async def report_progress(
        self, job_id: str, worker: str, *, message: str | None, progress: int | None
    ) -> Job | None:
        """A visible change on a running job held by ``worker``; None if it no longer holds it."""
        job = await self._write(
            lambda: _change_held(
                job_id, worker, lambda job: model.report(job, now=model.utcnow(), message=message, progress=progress)
            )
        )
        if job is not None and job_id in self._held:  # not if its end has begun meanwhile
            self._held[job_id] = job
        return job

    async def finish_job(
        self, job_id: str, worker: str, outcome: Outcome, *, answer_status: int | None = None
    ) -> Job | None:
        """running → success/failure; None if ``worker`` no longer holds the job. With
        ``answer_status``, an end that makes the job terminal also records that status of its
        first answer, in the same transaction (:mod:`tarefa.held_answers`).

        For a job claimed here, the outcome is applied to the job as this store last saved it and
        written back only if the row is still that version (:class:`~.steps.SaveHeld`: no read);
        if anything changed it since (a cancel request, a lease taken over), the full rule runs in
        the same transaction: load the job, apply the outcome, save."""
        held = self._held.pop(job_id, None)
        return await self._write(lambda: _finish(job_id, worker, outcome, answer_status, held))

    async def renew_leases(self, worker: str, job_ids: Collection[str], lease_seconds: float) -> set[str]:
        """Extend the leases ``worker`` still holds; returns the ids it still holds."""
        if not job_ids:
            return set()
        expires = model.utcnow() + timedelta(seconds=lease_seconds)
        held: set[str] = await self._write(lambda: _one(steps.RenewLeases(worker, tuple(job_ids), expires)))
        for job_id in job_ids:  # the versions kept follow the rows, so a long job's end needs no read
            job = self._held.get(job_id)  # absent if its end has begun meanwhile
            if job is None:
                continue
            if job_id in held:  # an end that began before the renewal meets its check and takes the full rule
                self._held[job_id] = model.evolve(job, lease_expires=expires)
            else:
                del self._held[job_id]
        return held

    async def release_jobs(self, worker: str, job_ids: Collection[str]) -> list[Job]:
        """Graceful stop: apply :func:`tarefa.model.lose` at once to these jobs held by ``worker``."""
        if not job_ids:
            return []
        for job_id in job_ids:
            self._held.pop(job_id, None)
        return await self._write(lambda: _lose(steps.LoadHeld(worker, tuple(sorted(job_ids)))))

    def _remember(self, job: Job) -> None:
        """Keep the version of a job claimed here, for its end (:meth:`finish_job`)."""
        held = self._held
        held[job.id] = job
        if len(held) > HELD_JOBS_KEPT:  # jobs whose end never came here (a lost lease): the oldest go
            del held[next(iter(held))]

    async def recover_jobs(self, *, expired_only: bool = True) -> list[Job]:
        """Apply :func:`tarefa.model.lose` to running jobs whose lease has expired (or to every
        running job when ``expired_only`` is False). Returns the changed jobs."""
        return await self._write(lambda: _recover(expired_only))

    # -- callbacks (SPEC §10; tarefa.store.outbox) ------------------------------------------------

    async def claim_callbacks(
        self, worker: str, *, limit: int, lease_seconds: float, recover: bool = False
    ) -> list[CallbackDelivery]:
        """Lease up to ``limit`` due deliveries of the outbox to ``worker`` (``recover``: also
        those leased by a process that is gone, for a store this process owns). No delivery is
        ever leased to two workers at once."""
        if limit <= 0:
            return []
        now = model.utcnow()
        until = now + timedelta(seconds=lease_seconds)
        step = steps.ClaimCallbacks(worker, limit, now, until, recover)
        claimed: list[CallbackDelivery] = await self._write(lambda: _one(step))
        return claimed

    async def renew_callback_leases(self, worker: str, delivery_ids: Collection[str], lease_seconds: float) -> None:
        """Extend the leases ``worker`` holds on deliveries in flight."""
        if delivery_ids:
            until = model.utcnow() + timedelta(seconds=lease_seconds)
            await self._write(lambda: _one(steps.RenewCallbackLeases(worker, tuple(delivery_ids), until)))

    async def record_callback_attempt(self, attempt: CallbackAttempt, next_due: datetime | None) -> None:
        """Store an attempt; the delivery is due again at ``next_due``, or ends (None)."""
        await self._write(lambda: _one(steps.RecordCallbackAttempt(attempt, next_due)))

    async def list_callback_attempts(
        self, job_id: str, *, owner: str | None = None, after: int = 0, limit: int = 100
    ) -> list[CallbackAttempt] | None:
        """The attempts of the job's callbacks, oldest first, with ``num > after``; None if the
        job is unknown or not owned by ``owner``."""
        return await self._read(lambda: _attempts(job_id, owner, after, limit))

    # -- changing ---------------------------------------------------------------------------------

    async def cancel_job(self, job_id: str, owner: str | None = None) -> Job | None:
        """:func:`tarefa.model.request_cancel`; None if unknown; :class:`JobAlreadyTerminal`."""
        return await self._write(lambda: _cancel(job_id, owner))

    async def delete_job(self, job_id: str, owner: str | None = None) -> bool:
        """Delete a terminal job and its history; False if unknown; :class:`JobNotTerminal`."""
        return await self._write(lambda: _delete(job_id, owner))

    async def purge_jobs(self, ended_before: datetime) -> int:
        """Delete terminal jobs that ended before the instant, in batches; returns how many."""
        purged = 0
        while True:
            ids: list[str] = await self._write(lambda: _one(steps.PurgeJobs(ended_before, PURGE_BATCH)))
            purged += len(ids)
            if len(ids) < PURGE_BATCH:
                return purged


# -- the rules ------------------------------------------------------------------------------------


def _one(step: Any) -> Program[Any]:
    """A program of one step."""
    return (yield step)


def _create(
    job: Job,
    idempotency: Idempotency | None,
    resource_key: str | None,
    precondition: Precondition | None,
    claim: Claim | None = None,
    answer_by: datetime | None = None,
) -> Program[Created]:
    # The insert comes first: it meets a conflict on a repeated key or a busy resource key, and
    # only then do the lookups run (each step sees the latest commits, so the conflict the insert
    # met is visible to them); a conflicting job that ended meanwhile means: try again.
    started: Job | None = None
    if claim is not None:
        now = model.utcnow()
        expires = now + timedelta(seconds=claim.lease_seconds)
        started = model.start(job, now=now, worker=claim.worker, lease_expires=expires)
    for _ in range(_CREATE_ATTEMPTS):
        if precondition is not None:
            precondition.check((yield steps.LoadDocument(precondition.kind, precondition.key)))
        if started is None:
            event = yield steps.InsertJob(job, resource_key, idempotency, answer_by)
            if event is not None:
                yield from _queue_callbacks(((job, event),))
                return Created(job, created=True)
        else:
            events = yield steps.InsertClaimed(job, started, resource_key, idempotency, answer_by)
            if events is not None:
                yield from _queue_callbacks(((job, events[0]), (started, events[1])))
                return Created(job, created=True, claimed=started)
        if idempotency is not None:
            replay = yield from _replay(job.owner, idempotency)
            if replay is not None:
                return replay
        if resource_key is not None:
            holder = yield steps.LoadResourceHolder(resource_key)
            if holder is not None:
                raise ResourceBusy(resource_key, holder)
    raise StoreError(f"could not insert job {job.id}: a job with this id exists")


def _replay(owner: str, idempotency: Idempotency) -> Program[Created | None]:
    entry = yield steps.LoadIdempotent(owner, idempotency.key)
    return replay_of(entry, idempotency)


def replay_of(entry: steps.IdempotentEntry | None, idempotency: Idempotency) -> Created | None:
    """The replay of a call with ``idempotency`` given the entry its key has (None: a new key);
    :class:`IdempotencyMismatch` if the key came with another request."""
    if entry is None:
        return None
    if entry.request_hash != idempotency.request_hash:
        raise IdempotencyMismatch(idempotency.key, entry.job.id)
    return Created(entry.job, created=False, answer_status=entry.answer_status)


def _history(job_id: str, owner: str | None, after: int, limit: int) -> Program[list[JobEvent] | None]:
    if (yield steps.LoadJob(job_id, owner)) is None:
        return None
    events: list[JobEvent] = yield steps.ListEvents(job_id, after, limit)
    return events


def _all_events(query: EventQuery) -> Program[EventPage]:
    settled: int = yield steps.SettledSeq()
    if settled <= query.after or query.limit <= 0:  # limit 0: only how far the store is settled
        return EventPage([], max(settled, query.after))
    events: list[JobEvent] = yield steps.ListAllEvents(query, settled)
    covered = events[-1].seq if len(events) >= query.limit else settled
    return EventPage(events, covered)


def _attempts(job_id: str, owner: str | None, after: int, limit: int) -> Program[list[CallbackAttempt] | None]:
    if (yield steps.LoadJob(job_id, owner)) is None:
        return None
    attempts: list[CallbackAttempt] = yield steps.ListCallbackAttempts(job_id, after, limit)
    return attempts


def _saved(jobs: tuple[Job, ...]) -> Program[list[JobEvent]]:
    """Save the jobs with their events, and queue the callbacks those events call for."""
    events: list[JobEvent] = yield steps.SaveJobs(jobs)
    yield from _queue_callbacks(zip(jobs, events, strict=True))
    return events


def _queue_callbacks(changes: Iterable[tuple[Job, JobEvent]]) -> Program[None]:
    """The outbox rows of these events, in the transaction that records them (SPEC §10)."""
    deliveries = deliveries_for(changes, model.utcnow())
    if deliveries:
        yield steps.QueueCallbacks(deliveries)


def _claim(worker: str, operations: tuple[str, ...], limit: int, lease_seconds: float) -> Program[list[Job]]:
    queued: list[Job] = yield steps.LoadQueued(operations, limit)
    now = model.utcnow()
    expires = now + timedelta(seconds=lease_seconds)
    started = [model.start(job, now=now, worker=worker, lease_expires=expires) for job in queued]
    if started:
        yield from _saved(tuple(started))
    return started


def holds(job: Job, worker: str) -> bool:
    """True while ``worker`` holds the lease of the running job."""
    return job.state is JobState.RUNNING and job.lease_owner == worker


def _change_held(job_id: str, worker: str, transition: Callable[[Job], Job]) -> Program[Job | None]:
    job = yield steps.LoadJob(job_id)
    if job is None or not holds(job, worker):
        return None
    return (yield from _save(job, transition(job)))


def _finish(
    job_id: str, worker: str, outcome: Outcome, answer_status: int | None, held: Job | None = None
) -> Program[Job | None]:
    if held is not None and holds(held, worker):
        ended = apply_outcome(held, outcome, now=model.utcnow())
        event = yield steps.SaveHeld(ended, held, answer_status if ended.is_terminal else None)
        if event is not None:
            yield from _queue_callbacks(((ended, event),))
            return ended
    finished = yield from _change_held(job_id, worker, lambda job: apply_outcome(job, outcome, now=model.utcnow()))
    if finished is not None and answer_status is not None and finished.is_terminal:
        yield steps.SetAnswerStatus(job_id, answer_status)
    return finished


def _save(job: Job, changed: Job) -> Program[Job]:
    """Save ``changed`` (a transition of ``job``) unless the transition changed nothing."""
    if changed is not job:
        yield from _saved((changed,))
    return changed


def _lose(load: steps.LoadHeld | steps.LoadLost) -> Program[list[Job]]:
    running: list[Job] = yield load
    now = model.utcnow()
    lost = [model.lose(job, now=now) for job in running]
    if lost:
        yield from _saved(tuple(lost))
    return lost


def _recover(expired_only: bool) -> Program[list[Job]]:
    return (yield from _lose(steps.LoadLost(model.utcnow() if expired_only else None)))


def _cancel(job_id: str, owner: str | None) -> Program[Job | None]:
    job = yield steps.LoadJob(job_id, owner)
    if job is None:
        return None
    if job.is_terminal:
        raise JobAlreadyTerminal(job)
    return (yield from _save(job, model.request_cancel(job, now=model.utcnow())))


def _delete(job_id: str, owner: str | None) -> Program[bool]:
    job = yield steps.LoadJob(job_id, owner)
    if job is None:
        return False
    if not job.is_terminal:
        raise JobNotTerminal(job)
    yield steps.DeleteJob(job_id)
    return True


#: The name applications and older code know the seam by.
Store = JobStore
