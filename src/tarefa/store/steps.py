"""The primitive steps a job rule asks of a backend, and the drivers that run a rule.

A rule of :class:`~tarefa.store.jobstore.JobStore` is a generator (a :data:`Program`): it yields
steps and is sent each step's result, so that the rule is written once, and each backend only
says how it does each step — in SQL, or on a dict — inside one transaction. A backend runs a
program with :func:`run` (a thread with a blocking connection) or :func:`run_async`; both record
the job changes that the write steps make, which the backend announces once it has committed.

Steps that load jobs in a write lock them until the transaction ends (``FOR UPDATE``) where the
backend has row locks; :class:`LoadQueued` and :class:`LoadLost` skip rows locked by others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from ..model import Job, JobEvent
from .base import EventQuery, Idempotency, JobChange, JobQuery
from .outbox import CallbackAttempt, CallbackDelivery

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LoadJob:
    """→ ``Job | None``: the job, if it exists and ``owner`` (None: anyone) owns it."""

    job_id: str
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class LoadQueued:
    """→ ``list[Job]``: up to ``limit`` queued jobs of these operations, oldest first, that no one
    else is claiming."""

    operations: tuple[str, ...]
    limit: int


@dataclass(frozen=True, slots=True)
class LoadHeld:
    """→ ``list[Job]``: the running jobs among ``job_ids`` whose lease ``worker`` holds."""

    worker: str
    job_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LoadLost:
    """→ ``list[Job]``: running jobs whose lease expired before the instant (None: every running
    job), but those another transaction is recovering."""

    expired_before: datetime | None


@dataclass(frozen=True, slots=True)
class IdempotentEntry:
    """What :class:`LoadIdempotent` finds: the first job of a key and its request's fingerprint."""

    job: Job
    request_hash: str
    answer_status: int


@dataclass(frozen=True, slots=True)
class LoadIdempotent:
    """→ ``IdempotentEntry | None``: the job ``owner`` first created with this key."""

    owner: str
    key: str


@dataclass(frozen=True, slots=True)
class LoadResourceHolder:
    """→ ``str | None``: the id of the non-terminal job that holds the resource key."""

    resource_key: str


@dataclass(frozen=True, slots=True)
class LoadDocument:
    """→ ``dict | None``: an application document (:mod:`tarefa.store.documents`), locked until
    the transaction ends in a write, so that a check made on it holds when the write commits."""

    kind: str
    key: str


@dataclass(frozen=True, slots=True)
class InsertDocuments:
    """→ ``bool``: insert every document, or none if any key exists (then nothing is kept)."""

    documents: tuple[tuple[str, str, dict[str, Any]], ...]


@dataclass(frozen=True, slots=True)
class InsertJob:
    """→ ``JobEvent | None``: insert the job and its first event; None (nothing inserted) when
    its id, its idempotency key (per owner) or its resource key (among non-terminal jobs) is
    taken."""

    job: Job
    resource_key: str | None
    idempotency: Idempotency | None
    answer_by: datetime | None = None  # only where the store records answers by their end


@dataclass(frozen=True, slots=True)
class InsertClaimed:
    """→ ``tuple[JobEvent, JobEvent] | None``: :class:`InsertJob` of ``job`` already claimed:
    the row is ``started`` (:func:`tarefa.model.start` of ``job``), with both events (queued, then
    running); None (nothing inserted) on the conflicts of :class:`InsertJob`."""

    job: Job
    started: Job
    resource_key: str | None
    idempotency: Idempotency | None
    answer_by: datetime | None = None


@dataclass(frozen=True, slots=True)
class SaveJobs:
    """→ ``list[JobEvent]``: write these loaded jobs back, each with a new event, in order."""

    jobs: tuple[Job, ...]


@dataclass(frozen=True, slots=True)
class SaveHeld:
    """→ ``JobEvent | None``: write ``job`` (a change of the running job ``held``, as this process
    last saved or renewed it) back with a new event, only if the row is still ``held``: running, same lease
    holder and expiry, same ``last_modified``; None (nothing written) if anything changed it.
    With ``answer_status``, that status of the job's first answer too (:class:`SetAnswerStatus`)."""

    job: Job
    held: Job
    answer_status: int | None = None


@dataclass(frozen=True, slots=True)
class DeleteJob:
    """→ None: delete the job and its history."""

    job_id: str


@dataclass(frozen=True, slots=True)
class PurgeJobs:
    """→ ``list[str]``: delete up to ``limit`` jobs that ended before the instant (and their
    histories); the ids deleted."""

    ended_before: datetime
    limit: int


@dataclass(frozen=True, slots=True)
class RenewLeases:
    """→ ``set[str]``: extend to ``expires`` the leases ``worker`` still holds among ``job_ids``
    (not a visible change); the ids it holds."""

    worker: str
    job_ids: tuple[str, ...]
    expires: datetime


@dataclass(frozen=True, slots=True)
class SetAnswerStatus:
    """→ None: record the status code of a job's first answer (for idempotent replays)."""

    job_id: str
    status: int


@dataclass(frozen=True, slots=True)
class ListJobs:
    """→ ``list[Job]``: a page of jobs (see :class:`~tarefa.store.JobQuery`)."""

    query: JobQuery


@dataclass(frozen=True, slots=True)
class ListEvents:
    """→ ``list[JobEvent]``: up to ``limit`` events of the job with ``seq > after``, oldest first."""

    job_id: str
    after: int
    limit: int


@dataclass(frozen=True, slots=True)
class SettledSeq:
    """→ ``int``: a ``seq`` such that every event with a ``seq`` at or below it that will ever
    be committed is committed now (and visible to the steps that follow): the highest ``seq``
    stored, once every transaction still in progress when it was read has ended. Where events
    commit in ``seq`` order (one writer: SQLite, memory) that is simply the highest ``seq``."""


@dataclass(frozen=True, slots=True)
class ListAllEvents:
    """→ ``list[JobEvent]``: up to ``query.limit`` events of every job that ``query`` shows, with
    ``query.after < seq <= upto``, oldest first."""

    query: EventQuery
    upto: int


@dataclass(frozen=True, slots=True)
class CountJobs:
    """→ ``dict[tuple[str, str], int]``: how many jobs the store holds per ``(state, operation)``
    (one grouped query)."""


@dataclass(frozen=True, slots=True)
class ReadSchemaVersion:
    """→ ``tuple[int, int]``: the schema version of the database, and the one this tarefa knows."""


@dataclass(frozen=True, slots=True)
class CountQueued:
    """→ ``int``: how many jobs are queued in the store (an indexed count)."""


@dataclass(frozen=True, slots=True)
class QueueCallbacks:
    """→ None: add these deliveries to the callback outbox (:mod:`tarefa.store.outbox`)."""

    deliveries: tuple[CallbackDelivery, ...]


@dataclass(frozen=True, slots=True)
class ClaimCallbacks:
    """→ ``list[CallbackDelivery]``: up to ``limit`` pending deliveries due at ``now``, oldest due
    first, that no one else is claiming, now leased to ``worker`` until ``lease_until``. With
    ``recover``, deliveries leased to anyone count as due (a store one process owns, at start)."""

    worker: str
    limit: int
    now: datetime
    lease_until: datetime
    recover: bool = False


@dataclass(frozen=True, slots=True)
class RenewCallbackLeases:
    """→ None: extend to ``lease_until`` the leases ``worker`` holds on these pending deliveries."""

    worker: str
    delivery_ids: tuple[str, ...]
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class RecordCallbackAttempt:
    """→ None: store the attempt; its delivery is due again at ``next_due`` (and no longer
    leased), or ends with the attempt's outcome when ``next_due`` is None."""

    attempt: CallbackAttempt
    next_due: datetime | None


@dataclass(frozen=True, slots=True)
class ListCallbackAttempts:
    """→ ``list[CallbackAttempt]``: up to ``limit`` attempts of the job's callbacks with
    ``num > after``, oldest first."""

    job_id: str
    after: int
    limit: int


Step = (
    LoadJob | LoadQueued | LoadHeld | LoadLost | LoadIdempotent | LoadResourceHolder | LoadDocument
    | InsertDocuments | InsertJob | InsertClaimed | SaveJobs | SaveHeld | DeleteJob | PurgeJobs | RenewLeases
    | SetAnswerStatus | ListJobs
    | ListEvents | SettledSeq | ListAllEvents | CountJobs | ReadSchemaVersion | CountQueued
    | QueueCallbacks | ClaimCallbacks | RenewCallbackLeases | RecordCallbackAttempt | ListCallbackAttempts
)  # fmt: skip

#: A rule: yields steps, is sent their results, returns its value.
Program = Generator[Step, Any, T]


def announced(step: Step, result: Any) -> Sequence[JobChange]:
    """The job changes a step made, given its result."""
    if isinstance(step, InsertJob):
        key = step.idempotency.key if step.idempotency is not None else None
        return () if result is None else (JobChange(step.job.id, step.job, result, key),)
    if isinstance(step, InsertClaimed):
        key = step.idempotency.key if step.idempotency is not None else None
        return () if result is None else (JobChange(step.job.id, step.job, result[0], key),
                                          JobChange(step.job.id, step.started, result[1]))  # fmt: skip
    if isinstance(step, SaveHeld):
        return () if result is None else (JobChange(step.job.id, step.job, result),)
    if isinstance(step, SaveJobs):
        return [JobChange(job.id, job, event) for job, event in zip(step.jobs, result, strict=True)]
    if isinstance(step, DeleteJob):
        return (JobChange(step.job_id, None),)
    if isinstance(step, PurgeJobs):
        return [JobChange(job_id, None) for job_id in result]
    return ()


def run(program: Program[T], do: Callable[[Step], Any], changes: list[JobChange]) -> T:
    """Run ``program``, doing each step with ``do``; the changes made go to ``changes``."""
    result: Any = None
    while True:
        try:
            step = program.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result = do(step)
        changes.extend(announced(step, result))


async def run_async(program: Program[T], do: Callable[[Step], Awaitable[Any]], changes: list[JobChange]) -> T:
    """:func:`run` for a backend whose steps are coroutines."""
    result: Any = None
    while True:
        try:
            step = program.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result = await do(step)
        changes.extend(announced(step, result))


def numbered(events: Sequence[JobEvent], seqs: Sequence[int]) -> list[JobEvent]:
    """The events with the ``seq`` the store gave them."""
    return [_with_seq(event, seq) for event, seq in zip(events, seqs, strict=True)]


def _with_seq(event: JobEvent, seq: int) -> JobEvent:
    return JobEvent(
        seq, event.job_id, event.time, event.state, event.message, event.progress, event.error,
        event.operation, event.owner,
    )  # fmt: skip
