"""The memory store (``memory://``): jobs in this process's memory, for tests and quick starts.

It follows the whole store contract but durability: everything is gone when the process ends.
Jobs are kept encoded as the durable stores keep them (JSON values as JSON text), so what comes
back is what a durable store would give back. A write runs its program at once, on the event loop
(there is no I/O); if the program raises, its steps are undone.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import orjson

from ..model import Job, JobEvent, JobState, event_of
from . import steps
from .base import JobChange, JobQuery, StoreError
from .columns import Codec, json_bytes
from .documents import Documents
from .jobstore import JobStore
from .outbox import CallbackAttempt, CallbackDelivery
from .steps import Program, numbered, run

T = TypeVar("T")


CODEC = Codec(encoders={"json": json_bytes}, decoders={"json": orjson.loads})


@dataclass
class _Row:
    values: list[Any]
    state: JobState
    resource_key: str | None = None
    idempotency: tuple[str, str] | None = None  # (key, request hash)
    answer_status: int = 202
    events: list[JobEvent] = field(default_factory=list)


@dataclass
class _Outbox:
    """A delivery of the outbox: due at ``due`` while pending (``outcome`` None)."""

    delivery: CallbackDelivery
    due: datetime
    lease_owner: str | None = None
    outcome: str | None = None


class MemoryStore(JobStore, Documents):
    """A store in this process's memory (module doc)."""

    exclusive = True

    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, _Row] = {}
        self._documents: dict[tuple[str, str], bytes] = {}
        self._seq = 0
        self._outbox: dict[str, _Outbox] = {}
        self._attempts: list[CallbackAttempt] = []
        self._attempt_num = 0
        self._open = False
        self._undo: list[Callable[[], None]] = []

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def upgrade(self) -> int:
        return 1

    @property
    def documents(self) -> Documents:
        return self

    async def _write(self, program: Callable[[], Program[T]]) -> T:
        self._check_open()
        changes: list[JobChange] = []
        self._undo = []
        try:
            value = run(program(), self._do, changes)
        except BaseException:
            for undo in reversed(self._undo):
                undo()
            raise
        finally:
            self._undo = []
        self._emit(changes)
        return value

    async def _read(self, program: Callable[[], Program[T]]) -> T:
        self._check_open()
        return run(program(), self._do, [])

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("the memory store is not open: call 'await store.open()' first")

    # -- steps --------------------------------------------------------------------------------------

    def _do(self, step: steps.Step) -> Any:
        match step:
            case steps.LoadJob(job_id, owner):
                job = self._job(job_id)
                return job if job is not None and (owner is None or job.owner == owner) else None
            case steps.LoadQueued(operations, limit):
                queued = [job for job in self._jobs() if job.state is JobState.QUEUED and job.operation in operations]
                return sorted(queued, key=lambda job: (job.create_time, job.id))[:limit]
            case steps.LoadHeld(worker, job_ids):
                jobs = (self._job(job_id) for job_id in job_ids)
                return [j for j in jobs if j is not None and j.state is JobState.RUNNING and j.lease_owner == worker]
            case steps.LoadLost(expired_before):
                return sorted((job for job in self._jobs() if _lost(job, expired_before)), key=lambda job: job.id)
            case steps.LoadIdempotent(owner, key):
                return self._idempotent(owner, key)
            case steps.LoadResourceHolder(resource_key):
                return self._holder(resource_key)
            case steps.LoadDocument(kind, key):
                data = self._documents.get((kind, key))
                return None if data is None else dict(orjson.loads(data))
            case steps.InsertDocuments(documents):
                return self._insert_documents(documents)
            case steps.InsertJob(job, resource_key, idempotency):
                return self._insert(
                    job, resource_key, None if idempotency is None else (idempotency.key, idempotency.request_hash)
                )
            case steps.SaveJobs(jobs):
                return [self._save(job) for job in jobs]
            case steps.InsertClaimed(job, started, resource_key, idempotency):
                idem = None if idempotency is None else (idempotency.key, idempotency.request_hash)
                first = self._insert(job, resource_key, idem)
                return None if first is None else (first, self._save(started))
            case steps.SaveHeld(job, held, answer_status):
                now = self._job(job.id)
                if now is None or not _same_hold(now, held):
                    return None
                if answer_status is not None:
                    self._do(steps.SetAnswerStatus(job.id, answer_status))
                return self._save(job)
            case steps.DeleteJob(job_id):
                self._delete(job_id)
                return None
            case steps.PurgeJobs(ended_before, limit):
                ids = [job.id for job in self._jobs() if _ended_before(job, ended_before)][:limit]
                for job_id in ids:
                    self._delete(job_id)
                return ids
            case steps.RenewLeases(worker, job_ids, expires):
                return self._renew(worker, job_ids, expires)
            case steps.SetAnswerStatus(job_id, status):
                if (row := self._rows.get(job_id)) is not None:
                    row.answer_status = status
                return None
            case steps.ListJobs(query):
                return _page(list(self._jobs()), query)
            case steps.ListEvents(job_id, after, limit):
                row = self._rows.get(job_id)
                events = row.events if row is not None else []
                return [event for event in events if event.seq > after][:limit]
            case steps.SettledSeq():
                return self._seq  # one writer, on the loop: every seq given is committed or undone
            case steps.ListAllEvents(query, upto):
                found = [e for row in self._rows.values() for e in row.events if query.after < e.seq <= upto]
                return sorted((e for e in found if query.shows(e)), key=lambda e: e.seq)[: query.limit]
            case steps.CountJobs():
                return dict(Counter((job.state.value, job.operation) for job in self._jobs()))
            case steps.ReadSchemaVersion():
                return (1, 1)
            case steps.CountQueued():
                return sum(1 for job in self._jobs() if job.state is JobState.QUEUED)
            case steps.QueueCallbacks(deliveries):
                for delivery in deliveries:
                    self._set_outbox(delivery.id, _Outbox(delivery, delivery.create_time))
                return None
            case steps.ClaimCallbacks(worker, limit, now, lease_until, recover):
                return self._claim_callbacks(worker, limit, now, lease_until, recover)
            case steps.RenewCallbackLeases(worker, delivery_ids, lease_until):
                for delivery_id in delivery_ids:
                    entry = self._outbox.get(delivery_id)
                    if entry is not None and entry.outcome is None and entry.lease_owner == worker:
                        self._set_outbox(delivery_id, dataclasses.replace(entry, due=lease_until))
                return None
            case steps.RecordCallbackAttempt(attempt, next_due):
                self._record_attempt(attempt, next_due)
                return None
            case steps.ListCallbackAttempts(job_id, after, limit):
                return [a for a in self._attempts if a.job_id == job_id and a.num > after][:limit]
        raise AssertionError(f"unknown step {step!r}")

    def _insert_documents(self, documents: tuple[tuple[str, str, dict[str, Any]], ...]) -> bool:
        if any((kind, key) in self._documents for kind, key, _ in documents):
            return False
        for kind, key, data in documents:
            self._documents[kind, key] = json_bytes(data)
            self._undo.append(functools.partial(_forget_document, self._documents, (kind, key)))
        return True

    def _job(self, job_id: str) -> Job | None:
        row = self._rows.get(job_id)
        return None if row is None else CODEC.decode(row.values)

    def _jobs(self) -> list[Job]:
        return [CODEC.decode(row.values) for row in self._rows.values()]

    def _idempotent(self, owner: str, key: str) -> steps.IdempotentEntry | None:
        for row in self._rows.values():
            job = CODEC.decode(row.values)
            if row.idempotency is not None and row.idempotency[0] == key and job.owner == owner:
                return steps.IdempotentEntry(job, row.idempotency[1], row.answer_status)
        return None

    def _holder(self, resource_key: str) -> str | None:
        for job_id, row in self._rows.items():
            if row.resource_key == resource_key and not row.state.is_terminal:
                return job_id
        return None

    def _insert(self, job: Job, resource_key: str | None, idempotency: tuple[str, str] | None) -> JobEvent | None:
        taken = job.id in self._rows or (resource_key is not None and self._holder(resource_key) is not None)
        if taken or (idempotency is not None and self._idempotent(job.owner, idempotency[0]) is not None):
            return None
        self._rows[job.id] = _Row(CODEC.encode(job), job.state, resource_key, idempotency)
        self._undo.append(lambda: _unset(self._rows, job.id))
        return self._add_event(job)

    def _save(self, job: Job) -> JobEvent:
        row = self._rows[job.id]
        before = (row.values, row.state)
        row.values, row.state = CODEC.encode(job), job.state
        self._undo.append(lambda: _restore(row, *before))
        return self._add_event(job)

    def _add_event(self, job: Job) -> JobEvent:
        self._seq += 1
        [event] = numbered([event_of(job)], [self._seq])
        events = self._rows[job.id].events
        events.append(event)
        self._undo.append(lambda: _drop_last(events))
        return event

    def _delete(self, job_id: str) -> None:
        row = self._rows.pop(job_id, None)
        if row is not None:
            self._undo.append(lambda: self._rows.__setitem__(job_id, row))
        for delivery_id in [key for key, entry in self._outbox.items() if entry.delivery.job_id == job_id]:
            self._set_outbox(delivery_id, None)
        attempts = self._attempts
        self._attempts = [attempt for attempt in attempts if attempt.job_id != job_id]
        self._undo.append(lambda: setattr(self, "_attempts", attempts))

    # -- the callback outbox -------------------------------------------------------------------------

    def _set_outbox(self, delivery_id: str, entry: _Outbox | None) -> None:
        before = self._outbox.get(delivery_id)
        if entry is None:
            self._outbox.pop(delivery_id, None)
        else:
            self._outbox[delivery_id] = entry
        self._undo.append(lambda: _put(self._outbox, delivery_id, before))

    def _claim_callbacks(
        self, worker: str, limit: int, now: datetime, lease_until: datetime, recover: bool
    ) -> list[CallbackDelivery]:
        pending = [entry for entry in self._outbox.values() if entry.outcome is None]
        due = [e for e in pending if e.due <= now or (recover and e.lease_owner is not None)]
        claimed = sorted(due, key=lambda entry: (entry.due, entry.delivery.id))[:limit]
        for entry in claimed:
            self._set_outbox(entry.delivery.id, dataclasses.replace(entry, due=lease_until, lease_owner=worker))
        return [entry.delivery for entry in claimed]

    def _record_attempt(self, attempt: CallbackAttempt, next_due: datetime | None) -> None:
        self._attempt_num += 1
        attempts = self._attempts
        self._attempts = [*attempts, dataclasses.replace(attempt, num=self._attempt_num)]
        self._undo.append(lambda: setattr(self, "_attempts", attempts))
        entry = self._outbox.get(attempt.delivery_id)
        if entry is not None:
            delivery = dataclasses.replace(entry.delivery, attempts=entry.delivery.attempts + 1)
            outcome = None if next_due is not None else attempt.outcome
            self._set_outbox(delivery.id, _Outbox(delivery, next_due or entry.due, None, outcome))

    def _renew(self, worker: str, job_ids: tuple[str, ...], expires: datetime) -> set[str]:
        held: set[str] = set()
        for job_id in job_ids:
            job = self._job(job_id)
            if job is not None and job.state is JobState.RUNNING and job.lease_owner == worker:
                row = self._rows[job_id]
                before = row.values
                row.values = CODEC.encode(_with_lease(job, expires))
                self._undo.append(lambda row=row, before=before: setattr(row, "values", before))  # type: ignore[misc]
                held.add(job_id)
        return held

    # -- documents ----------------------------------------------------------------------------------

    async def put_document(self, kind: str, key: str, data: dict[str, Any], *, only_if_absent: bool = False) -> bool:
        self._check_open()
        if only_if_absent and (kind, key) in self._documents:
            return False
        self._documents[kind, key] = json_bytes(data)
        return True

    async def get_document(self, kind: str, key: str) -> dict[str, Any] | None:
        self._check_open()
        data = self._documents.get((kind, key))
        return None if data is None else dict(orjson.loads(data))

    async def list_documents(self, kind: str) -> list[dict[str, Any]]:
        self._check_open()
        keys = sorted((key.encode(), key) for k, key in self._documents if k == kind)
        return [dict(orjson.loads(self._documents[kind, key])) for _, key in keys]

    async def delete_document(self, kind: str, key: str) -> bool:
        self._check_open()
        return self._documents.pop((kind, key), None) is not None


def _put(outbox: dict[str, _Outbox], delivery_id: str, entry: _Outbox | None) -> None:
    if entry is None:
        outbox.pop(delivery_id, None)
    else:
        outbox[delivery_id] = entry


def _forget_document(documents: dict[tuple[str, str], bytes], key: tuple[str, str]) -> None:
    documents.pop(key, None)


def _unset(rows: dict[str, _Row], job_id: str) -> None:
    rows.pop(job_id, None)


def _drop_last(events: list[JobEvent]) -> None:
    events.pop()


def _restore(row: _Row, values: list[Any], state: JobState) -> None:
    row.values, row.state = values, state


def _with_lease(job: Job, expires: datetime) -> Job:
    return dataclasses.replace(job, lease_expires=expires)


def _lost(job: Job, expired_before: datetime | None) -> bool:
    if job.state is not JobState.RUNNING:
        return False
    return expired_before is None or (job.lease_expires is not None and job.lease_expires < expired_before)


def _ended_before(job: Job, instant: datetime) -> bool:
    return job.is_terminal and job.end_time is not None and job.end_time < instant


def _page(jobs: list[Job], query: JobQuery) -> list[Job]:
    """Filter, order and page as the SQL stores do (keyset, ties broken by id)."""
    chosen = [
        job
        for job in jobs
        if (query.owner is None or job.owner == query.owner)
        and (not query.states or job.state in query.states)
        and (query.operation is None or job.operation == query.operation)
    ]
    keyed = sorted(((getattr(job, query.order_by), job.id.encode()), job) for job in chosen)
    if query.descending:
        keyed.reverse()
    if query.after is not None:
        after = (query.after[0], query.after[1].encode())
        keyed = [(key, job) for key, job in keyed if (key < after if query.descending else key > after)]
    return [job for _, job in keyed[: max(0, query.limit)]]


def _same_hold(job: Job, held: Job) -> bool:
    """True if ``job`` (the row) is still the version ``held`` of a running job (:class:`~.steps.SaveHeld`)."""
    return (
        job.state is JobState.RUNNING
        and job.lease_owner == held.lease_owner
        and job.lease_expires == held.lease_expires
        and job.last_modified == held.last_modified
    )
