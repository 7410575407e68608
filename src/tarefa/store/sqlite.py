"""The embedded store: one SQLite file in WAL mode, used by one process.

Writes go through one writer thread that commits in groups (see :mod:`.sqlite_connection`);
reads use a second connection on its own thread, so a slow fsync never delays a poll. A job read
by its id (every standard and long poll) and the lookup of an ``Idempotency-Key`` (before every
keyed call) are one indexed row each: they are read on the event loop itself,
on a third connection that never waits for a lock (WAL readers do not wait for the writer; in the
rare case SQLite says busy, the read goes to the reader thread), which saves two thread switches. A
fourth connection, on a thread of its own, copies the WAL back into the database file every few
commits (:class:`~.sqlite_connection.Checkpointer`), so that no commit waits for that. The file is
locked for the life of the store: a second process opening it gets a clear error instead of
"recovering" jobs that the first one is running. The job rules are :class:`.JobStore`'s; this
module only says how SQLite does each step.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .. import model
from ..model import Job, JobError, JobEvent, JobState
from . import sqlite_sql as sql
from . import steps
from .base import Created, EventQuery, Idempotency, JobChange, JobQuery, SchemaTooNew, StoreError
from .columns import MUTABLE_COLUMNS, Codec, json_text
from .documents import Documents
from .jobstore import JobStore, replay_of
from .outbox import CallbackAttempt, CallbackDelivery
from .seen_keys import KeysSeen, SeenKeys
from .sqlite_connection import Checkpointer, ConnectionThread, Work, _as_store_error
from .steps import Program, run

T = TypeVar("T")
SYNCHRONOUS_MODES = ("full", "normal")
#: WAL pages after which a commit of the writer checkpoints itself (~1 MB). The checkpointer
#: (:mod:`.sqlite_connection`) has copied all but the last frames by then, off the commit path;
#: this last step lets the WAL start over while calls follow each other too closely for the
#: checkpointer to finish between two of them. (Measured: 120 pages cost W1 and W2 ~10 % more,
#: 1000 pages no less than 250.)
WAL_CHECKPOINT_PAGES = 250
#: The size the WAL file is cut back to after a checkpoint, in bytes.
WAL_SIZE_LIMIT = 1024 * 1024
NO_CHANGES: tuple[JobChange, ...] = ()
#: Events inserted by one statement at most (a power of two): 9 parameters each, under the 999
#: a statement may have in SQLite before 3.32.
EVENTS_PER_STATEMENT = 64
_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
logger = logging.getLogger("tarefa.store.sqlite")
#: What an inline read gives when it cannot read now (see ``SQLiteStore._read_inline``).
_BUSY_NOW = object()
CODEC = Codec(
    encoders={"time": model.to_microseconds, "json": json_text, "bool": int},
    decoders={"time": model.from_microseconds, "json": orjson.loads, "bool": bool},
)


def to_us(value: datetime | None) -> int | None:
    return None if value is None else model.to_microseconds(value)


def _ids(job_ids: Sequence[str]) -> str:
    return orjson.dumps(list(job_ids)).decode()


def _event_row(row: Sequence[Any]) -> JobEvent:
    error = None if row[6] is None else JobError(row[6], row[7] or "")
    return JobEvent(
        row[0], row[1], model.from_microseconds(row[2]), JobState(row[3]), row[4], row[5], error, row[8], row[9]
    )


def _delivery_values(delivery: CallbackDelivery) -> tuple[Any, ...]:
    d = delivery
    return (d.id, d.job_id, d.seq, d.url, d.body, to_us(d.create_time), d.attempts)


def _delivery_row(row: Sequence[Any]) -> CallbackDelivery:
    return CallbackDelivery(row[0], row[1], row[2], row[3], bytes(row[4]), model.from_microseconds(row[5]), row[6])


def _attempt_row(row: Sequence[Any]) -> CallbackAttempt:
    num, delivery_id, job_id, seq, url, time, duration, status, error, outcome = row
    return CallbackAttempt(
        delivery_id, job_id, seq, url, model.from_microseconds(time), duration, status, error, outcome, num
    )


def list_statement(query: JobQuery) -> tuple[str, list[Any]]:
    """The listing query for ``query`` and its parameters."""
    statement = sql.list_jobs_sql(
        order_by=query.order_by,
        descending=query.descending,
        by_owner=query.owner is not None,
        n_states=len(query.states),
        by_operation=query.operation is not None,
        paged=query.after is not None,
    )
    params: list[Any] = [] if query.owner is None else [query.owner]
    params += sorted(state.value for state in query.states)
    params += [] if query.operation is None else [query.operation]
    params += [] if query.after is None else [to_us(query.after[0]), query.after[1]]
    params.append(query.limit)
    return statement, params


def all_events_statement(query: EventQuery, upto: int) -> tuple[str, list[Any]]:
    """The query of :class:`~tarefa.store.steps.ListAllEvents` and its parameters."""
    statement = sql.all_events_sql(
        by_owner=query.owner is not None, n_states=len(query.states), by_operation=query.operation is not None
    )
    params: list[Any] = [query.after, upto]
    params += [] if query.owner is None else [query.owner]
    params += sorted(state.value for state in query.states)
    params += [] if query.operation is None else [query.operation]
    params.append(query.limit)
    return statement, params


class Steps:
    """How SQLite does each step of a job rule, on one connection (the writer's or the reader's)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def do(self, step: steps.Step) -> Any:
        match step:  # the steps of every job first: a case is an isinstance check
            case steps.InsertJob(job, resource_key, idempotency):
                idem = (idempotency.key, idempotency.request_hash) if idempotency else (None, None)
                cursor = self.conn.execute(sql.INSERT_JOB, (*CODEC.encode(job), resource_key, *idem))
                return self._event(job) if cursor.rowcount > 0 else None
            case steps.SaveJobs(jobs):
                self.conn.executemany(sql.UPDATE_JOB, [(*CODEC.encode(job, MUTABLE_COLUMNS), job.id) for job in jobs])
                return self._events(jobs)
            case steps.InsertClaimed(job, started, resource_key, idempotency):
                idem = (idempotency.key, idempotency.request_hash) if idempotency else (None, None)
                cursor = self.conn.execute(sql.INSERT_JOB, (*CODEC.encode(started), resource_key, *idem))
                return tuple(self._events((job, started))) if cursor.rowcount > 0 else None
            case steps.SaveHeld(job, held, answer_status):
                expected = (held.lease_owner, to_us(held.lease_expires), model.to_microseconds(held.last_modified))
                params = (*CODEC.encode(job, MUTABLE_COLUMNS), answer_status, job.id, *expected)
                return self._event(job) if self.conn.execute(sql.UPDATE_HELD_JOB, params).rowcount > 0 else None
            case steps.LoadJob(job_id, owner):
                found = self._one(sql.SELECT_JOB, (job_id,))
                return found if found is not None and (owner is None or found.owner == owner) else None
            case steps.LoadQueued(operations, limit):
                return self._jobs(sql.SELECT_QUEUED, (_ids(operations), limit))
            case steps.LoadHeld(worker, job_ids):
                return self._jobs(sql.SELECT_HELD, (worker, _ids(job_ids)))
            case steps.LoadLost(None):
                return self._jobs(sql.SELECT_RUNNING, ())
            case steps.LoadLost(expired_before):
                return self._jobs(sql.SELECT_EXPIRED, (to_us(expired_before),))
            case steps.LoadIdempotent(owner, key):
                return self._idempotent(owner, key)
            case steps.LoadResourceHolder(resource_key):
                row = self.conn.execute(sql.SELECT_RESOURCE_HOLDER, (resource_key,)).fetchone()
                return None if row is None else row[0]
            case steps.LoadDocument(kind, key):
                row = self.conn.execute(sql.GET_DOCUMENT, (kind, key)).fetchone()
                return None if row is None else dict(orjson.loads(row[0]))
            case steps.InsertDocuments(documents):
                keys = [(kind, key) for kind, key, _ in documents]
                if any(self.conn.execute(sql.GET_DOCUMENT, key).fetchone() for key in keys):
                    return False
                rows = [(kind, key, json_text(data)) for kind, key, data in documents]
                self.conn.executemany(sql.PUT_DOCUMENT, rows)
                return True
            case steps.DeleteJob(job_id):
                self.conn.execute(sql.DELETE_JOB, (job_id,))
                self._forget_histories([job_id])
                return None
            case steps.PurgeJobs(ended_before, limit):
                ids = [row[0] for row in self.conn.execute(sql.PURGE_JOBS, (to_us(ended_before), limit)).fetchall()]
                self._forget_histories(ids)
                return ids
            case steps.RenewLeases(worker, job_ids, expires):
                rows = self.conn.execute(sql.RENEW_LEASES, (to_us(expires), worker, _ids(job_ids))).fetchall()
                return {row[0] for row in rows}
            case steps.SetAnswerStatus(job_id, status):
                self.conn.execute(sql.UPDATE_ANSWER_STATUS, (status, job_id))
                return None
            case steps.ListJobs(query):
                return self._jobs(*list_statement(query))
            case steps.ListEvents(job_id, after, limit):
                return [_event_row(row) for row in self.conn.execute(sql.SELECT_EVENTS, (job_id, after, limit))]
            case steps.SettledSeq():
                return self.conn.execute(sql.SETTLED_SEQ).fetchone()[0]
            case steps.ListAllEvents(query, upto):
                return [_event_row(row) for row in self.conn.execute(*all_events_statement(query, upto))]
            case steps.CountJobs():
                return {(state, operation): n for state, operation, n in self.conn.execute(sql.COUNT_JOBS)}
            case steps.ReadSchemaVersion():
                return int(self.conn.execute("PRAGMA user_version").fetchone()[0]), len(sql.MIGRATIONS)
            case steps.CountQueued():
                return self.conn.execute(sql.COUNT_QUEUED).fetchone()[0]
            case steps.QueueCallbacks(deliveries):
                rows = [(*_delivery_values(d), to_us(d.create_time)) for d in deliveries]
                self.conn.executemany(sql.INSERT_DELIVERY, rows)
                return None
            case steps.ClaimCallbacks(worker, limit, now, lease_until, recover):
                params = (to_us(lease_until), worker, to_us(now), int(recover), limit)
                return [_delivery_row(row) for row in self.conn.execute(sql.CLAIM_DELIVERIES, params).fetchall()]
            case steps.RenewCallbackLeases(worker, delivery_ids, lease_until):
                self.conn.execute(sql.RENEW_DELIVERIES, (to_us(lease_until), worker, _ids(delivery_ids)))
                return None
            case steps.RecordCallbackAttempt(attempt, next_due):
                self._record_attempt(attempt, next_due)
                return None
            case steps.ListCallbackAttempts(job_id, after, limit):
                return [_attempt_row(row) for row in self.conn.execute(sql.SELECT_ATTEMPTS, (job_id, after, limit))]
        raise AssertionError(f"unknown step {step!r}")

    def _forget_histories(self, job_ids: Sequence[str]) -> None:
        """Delete the events and callbacks of deleted jobs."""
        for statement in (sql.DELETE_EVENTS, *sql.DELETE_CALLBACKS):
            self.conn.execute(statement, (_ids(job_ids),))

    def _record_attempt(self, attempt: CallbackAttempt, next_due: datetime | None) -> None:
        a = attempt
        self.conn.execute(
            sql.INSERT_ATTEMPT,
            (a.delivery_id, a.job_id, a.seq, a.url, to_us(a.time), a.duration, a.status, a.error, a.outcome),
        )
        outcome = None if next_due is not None else a.outcome
        self.conn.execute(sql.FINISH_ATTEMPT, (to_us(next_due), outcome, a.delivery_id))

    def _one(self, statement: str, params: Sequence[Any]) -> Job | None:
        row = self.conn.execute(statement, params).fetchone()
        return None if row is None else CODEC.decode(row)

    def _jobs(self, statement: str, params: Sequence[Any]) -> list[Job]:
        return [CODEC.decode(row) for row in self.conn.execute(statement, params)]

    def _idempotent(self, owner: str, key: str) -> steps.IdempotentEntry | None:
        row = self.conn.execute(sql.SELECT_BY_IDEMPOTENCY, (owner, key)).fetchone()
        return None if row is None else steps.IdempotentEntry(CODEC.decode(row[:-2]), row[-2], row[-1])

    def _event(self, job: Job) -> JobEvent:
        """Insert the event that records ``job`` as it is now; the event, numbered."""
        return self._events((job,))[0]

    def _events(self, jobs: Sequence[Job]) -> list[JobEvent]:
        """Insert the events that record ``jobs`` as they are now, a power of two of them per
        statement (one step for SQLite, one hand-off of the interpreter lock; a few statement
        texts, so that the connection's cache of prepared statements keeps the others); the
        events, numbered."""
        events: list[JobEvent] = []
        at = 0
        while at < len(jobs):
            n = min(EVENTS_PER_STATEMENT, 1 << ((len(jobs) - at).bit_length() - 1))
            events += self._insert_events(jobs[at : at + n])
            at += n
        return events

    def _insert_events(self, jobs: Sequence[Job]) -> list[JobEvent]:
        params: list[Any] = []
        for job in jobs:
            error = job.error
            params += (job.id, model.to_microseconds(job.last_modified), job.state.value, job.message, job.progress,
                       None if error is None else error.code, None if error is None else error.message, job.operation,
                       job.owner)  # fmt: skip
        last = self.conn.execute(sql.insert_events_sql(len(jobs)), params).lastrowid
        assert last is not None
        # One writer, one statement: the rows' seqs follow each other, up to the last one's.
        first = last - len(jobs) + 1
        return [
            JobEvent(seq, j.id, j.last_modified, j.state, j.message, j.progress, j.error, j.operation, j.owner)
            for seq, j in enumerate(jobs, first)
        ]


def _scan_keys(conn: sqlite3.Connection) -> tuple[SeenKeys, Sequence[JobChange]]:
    """The filter of every keyed job's ``(owner, key)`` (:mod:`~tarefa.store.seen_keys`)."""
    count = conn.execute(sql.COUNT_KEYED).fetchone()[0]
    return SeenKeys.of(conn.execute(sql.SELECT_KEYS), count), ()


class SQLiteStore(JobStore, Documents):
    """The embedded store. ``synchronous="full"`` (default) survives power loss; ``"normal"``
    is faster and survives a process crash, but may lose the last commits on power loss."""

    exclusive = True

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "full") -> None:
        if synchronous.lower() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}")
        super().__init__()
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self._writer: ConnectionThread | None = None
        self._reader: ConnectionThread | None = None
        self._inline: sqlite3.Connection | None = None  # the event loop's own, for reads by id
        self._checkpointer: Checkpointer | None = None
        self._lock_fd: int | None = None
        self._seen: KeysSeen | None = None  # the keys that may have a job (seen_keys), once open
        self._key_scan: asyncio.Task[None] | None = None  # a scan for a bigger filter (seen_keys)

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot open the SQLite store {self.path}: directory {self.path.parent} does not exist")
        self._lock_file()
        loop = asyncio.get_running_loop()
        checkpointer = Checkpointer(self._connect, name="tarefa-sqlite-checkpoint")
        writer = ConnectionThread(
            self._connect_writer, loop, self._emit, transactional=True, name="tarefa-sqlite-writer",
            checkpointer=checkpointer,
        )  # fmt: skip
        try:
            await writer.started()
        except BaseException:
            self._unlock_file()
            raise
        checkpointer.start()
        self._checkpointer = checkpointer
        reader = ConnectionThread(
            self._connect_reader, loop, self._emit, transactional=False, name="tarefa-sqlite-reader"
        )
        await reader.started()
        self._writer, self._reader = writer, reader
        self._inline = self._connect_reader(busy_timeout=0)
        # This process is the file's only writer (its lock): every keyed job is in this scan or
        # goes through create_job from now on.
        self._seen = KeysSeen(await reader.call(_scan_keys), scanned=True)

    async def upgrade(self) -> int:
        """Open (which migrates the schema) and tell the version."""
        await self.open()
        return len(sql.MIGRATIONS)

    async def close(self) -> None:
        writer, reader, inline = self._writer, self._reader, self._inline
        self._writer = self._reader = self._inline = None
        self._seen, scan, self._key_scan = None, self._key_scan, None
        if scan is not None:
            scan.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # closing goes on whatever it was
                await scan
        if inline is not None:
            inline.close()
        for thread in (writer, reader):
            if thread is not None:
                await thread.stop()
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            await checkpointer.stop()
        self._unlock_file()

    @property
    def documents(self) -> Documents:
        return self

    def _lock_file(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"the SQLite store {self.path} is in use by another process; "
                "an embedded store serves one process (use PostgreSQL for several)"
            ) from None
        self._lock_fd = fd

    def _unlock_file(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _connect(self, busy_timeout: int = 10000) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        # The checkpointer copies the WAL back; past ~1 MB a commit checkpoints the rest. The
        # file is cut back after each checkpoint, so it stays small.
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        migrate(conn)
        return conn

    def _connect_reader(self, busy_timeout: int = 10000) -> sqlite3.Connection:
        conn = self._connect(busy_timeout)
        conn.execute("PRAGMA query_only = 1")
        return conn

    async def get_job(self, job_id: str, owner: str | None = None) -> Job | None:
        found = self._read_inline(steps.LoadJob(job_id, owner))
        if found is _BUSY_NOW:
            return await super().get_job(job_id, owner)  # the reader thread waits for it
        return found  # type: ignore[no-any-return]

    async def create_job(self, job: Job, *, idempotency: Idempotency | None = None, **checks: Any) -> Created:
        seen = self._seen
        if idempotency is None or seen is None:
            return await super().create_job(job, idempotency=idempotency, **checks)
        with seen.inserting(str(job.owner), idempotency.key):  # added before the insert commits (seen_keys)
            created = await super().create_job(job, idempotency=idempotency, **checks)
        if seen.due:
            seen.begin_scan()
            self._key_scan = asyncio.create_task(self._rescan_keys(seen), name="tarefa-sqlite-keys")
        return created

    async def _rescan_keys(self, seen: KeysSeen) -> None:
        """A bigger filter, from the keyed jobs the file has now (:class:`KeysSeen`)."""
        fresh: SeenKeys | None = None
        try:
            if self._reader is not None:
                fresh = await self._reader.call(_scan_keys)
        except StoreError as exc:  # the filter keeps answering as it is; a crowded insert tries again later
            logger.warning("cannot scan the Idempotency-Keys for a bigger filter: %s", exc)
        finally:
            seen.end_scan(fresh)

    async def replay_idempotent(self, owner: str, idempotency: Idempotency) -> Created | None:
        # the lookup before every keyed call's endpoint: none for a key no job has (nearly every
        # call's), else one indexed row, read here too
        if self._seen is not None and not self._seen.may_hold(str(owner), idempotency.key):
            return None
        entry = self._read_inline(steps.LoadIdempotent(owner, idempotency.key))
        if entry is _BUSY_NOW:
            return await super().replay_idempotent(owner, idempotency)
        return replay_of(entry, idempotency)

    def _read_inline(self, step: steps.Step) -> Any:
        """One indexed read on the event loop's connection (module doc); :data:`_BUSY_NOW` if
        SQLite says busy (or the store is closed): then the caller asks the reader thread."""
        conn = self._inline
        if conn is None:
            return _BUSY_NOW
        try:
            return Steps(conn).do(step)
        except sqlite3.OperationalError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF not in _BUSY:
                raise _as_store_error(exc) from None
        except sqlite3.Error as exc:
            raise _as_store_error(exc) from None
        return _BUSY_NOW

    async def _call(self, work: Work[T]) -> T:
        if self._writer is None:
            raise StoreError("the SQLite store is not open")
        return await self._writer.call(work)

    async def _write(self, program: Callable[[], Program[T]]) -> T:
        def work(conn: sqlite3.Connection) -> tuple[T, Sequence[JobChange]]:
            changes: list[JobChange] = []
            return run(program(), Steps(conn).do, changes), changes

        return await self._call(work)

    async def _read(self, program: Callable[[], Program[T]]) -> T:
        return await self._reading(lambda conn: (run(program(), Steps(conn).do, []), NO_CHANGES))

    # -- documents ------------------------------------------------------------------------------

    async def put_document(self, kind: str, key: str, data: dict[str, Any], *, only_if_absent: bool = False) -> bool:
        statement = sql.PUT_DOCUMENT_IF_ABSENT if only_if_absent else sql.PUT_DOCUMENT
        text = json_text(data)

        def work(conn: sqlite3.Connection) -> tuple[bool, Sequence[JobChange]]:
            return conn.execute(statement, (kind, key, text)).rowcount > 0, NO_CHANGES

        return await self._call(work)

    async def get_document(self, kind: str, key: str) -> dict[str, Any] | None:
        def read(conn: sqlite3.Connection) -> tuple[dict[str, Any] | None, Sequence[JobChange]]:
            row = conn.execute(sql.GET_DOCUMENT, (kind, key)).fetchone()
            return (None if row is None else dict(orjson.loads(row[0]))), NO_CHANGES

        return await self._reading(read)

    async def list_documents(self, kind: str) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], Sequence[JobChange]]:
            return [dict(orjson.loads(row[0])) for row in conn.execute(sql.LIST_DOCUMENTS, (kind,))], NO_CHANGES

        return await self._reading(read)

    async def delete_document(self, kind: str, key: str) -> bool:
        def work(conn: sqlite3.Connection) -> tuple[bool, Sequence[JobChange]]:
            return conn.execute(sql.DELETE_DOCUMENT, (kind, key)).rowcount > 0, NO_CHANGES

        return await self._call(work)

    async def _reading(self, work: Work[T]) -> T:
        if self._reader is None:
            raise StoreError("the SQLite store is not open")
        return await self._reader.call(work)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations this file lacks, in one transaction; refuse a newer schema."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(sql.MIGRATIONS):
        raise SchemaTooNew(
            f"this database has schema version {version}, but this tarefa knows only up to "
            f"{len(sql.MIGRATIONS)}: upgrade tarefa"
        )
    if version == len(sql.MIGRATIONS):
        return version
    conn.execute("BEGIN IMMEDIATE")
    try:
        for script in sql.MIGRATIONS[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {len(sql.MIGRATIONS)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(sql.MIGRATIONS)
