"""The embedded store: one SQLite file in WAL mode, used by one process.

Writes go through one writer thread that commits in groups (see :mod:`.sqlite_connection`);
reads use a second connection on its own thread, so a slow fsync never delays a poll. The file
is locked for the life of the store: a second process opening it gets a clear error instead of
"recovering" jobs that the first one is running.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .. import model
from ..model import Job, JobError, JobState
from . import sqlite_sql as sql
from .base import (
    ChangeListener,
    Created,
    Idempotency,
    IdempotencyMismatch,
    JobAlreadyTerminal,
    JobChange,
    JobNotTerminal,
    JobQuery,
    Outcome,
    ResourceBusy,
    SchemaTooNew,
    StoreError,
    apply_outcome,
)
from .sqlite_connection import ConnectionThread, Work

T = TypeVar("T")
SYNCHRONOUS_MODES = ("full", "normal")
NO_CHANGES: tuple[JobChange, ...] = ()


def to_us(value: datetime | None) -> int | None:
    return None if value is None else model.to_microseconds(value)


def from_us(value: int | None) -> datetime | None:
    return None if value is None else model.from_microseconds(value)


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _unjson(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def row_to_job(row: Sequence[Any]) -> Job:
    error = JobError(row[10], row[11] or "") if row[10] is not None else None
    return Job(
        id=row[0],
        operation=row[1],
        state=JobState(row[2]),
        message=row[3],
        progress=row[4],
        create_time=model.from_microseconds(row[5]),
        start_time=from_us(row[6]),
        end_time=from_us(row[7]),
        last_modified=model.from_microseconds(row[8]),
        result=_unjson(row[9]),
        error=error,
        resource=row[12],
        owner=row[13],
        input=_unjson(row[14]),
        cancel_requested=bool(row[15]),
        attempts=row[16],
        max_attempts=row[17],
        lease_owner=row[18],
        lease_expires=from_us(row[19]),
    )


def _job_values(job: Job) -> tuple[Any, ...]:
    return (
        job.id, job.operation, job.state.value, job.message, job.progress, to_us(job.create_time),
        to_us(job.start_time), to_us(job.end_time), to_us(job.last_modified), _json(job.result),
        job.error.code if job.error else None, job.error.message if job.error else None,
        job.resource, job.owner, _json(job.input), int(job.cancel_requested), job.attempts,
        job.max_attempts, job.lease_owner, to_us(job.lease_expires),
    )  # fmt: skip


def _save(conn: sqlite3.Connection, job: Job) -> JobChange:
    conn.execute(
        sql.UPDATE_JOB,
        (
            job.state.value, job.message, job.progress, to_us(job.start_time), to_us(job.end_time),
            to_us(job.last_modified), _json(job.result), job.error.code if job.error else None,
            job.error.message if job.error else None, int(job.cancel_requested), job.attempts,
            job.lease_owner, to_us(job.lease_expires), job.id,
        ),
    )  # fmt: skip
    return JobChange(job.id, job)


def _select_job(conn: sqlite3.Connection, job_id: str, owner: str | None = None) -> Job | None:
    row = conn.execute(sql.SELECT_JOB, (job_id,)).fetchone()
    if row is None:
        return None
    job = row_to_job(row)
    return job if owner is None or job.owner == owner else None


def _select_jobs(conn: sqlite3.Connection, query: str, params: Sequence[Any]) -> list[Job]:
    return [row_to_job(row) for row in conn.execute(query, params)]


def _replay(conn: sqlite3.Connection, owner: str, idempotency: Idempotency) -> Created | None:
    row = conn.execute(sql.SELECT_BY_IDEMPOTENCY, (owner, idempotency.key)).fetchone()
    if row is None:
        return None
    first = row_to_job(row)
    if row[-2] != idempotency.request_hash:
        raise IdempotencyMismatch(idempotency.key, first.id)
    return Created(first, created=False, answer_status=row[-1])


def _ids(job_ids: Collection[str]) -> str:
    return orjson.dumps(list(job_ids)).decode()


class SQLiteStore:
    """The embedded store. ``synchronous="full"`` (default) survives power loss; ``"normal"``
    is faster and survives a process crash, but may lose the last commits on power loss."""

    exclusive = True

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "full") -> None:
        if synchronous.lower() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self._listeners: list[ChangeListener] = []
        self._writer: ConnectionThread | None = None
        self._reader: ConnectionThread | None = None
        self._lock_fd: int | None = None

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot open the SQLite store {self.path}: directory {self.path.parent} does not exist")
        self._lock_file()
        loop = asyncio.get_running_loop()
        writer = ConnectionThread(
            self._connect_writer, loop, self._deliver, transactional=True, name="tarefa-sqlite-writer"
        )
        try:
            await writer.started()
        except BaseException:
            self._unlock_file()
            raise
        reader = ConnectionThread(
            self._connect_reader, loop, self._deliver, transactional=False, name="tarefa-sqlite-reader"
        )
        await reader.started()
        self._writer, self._reader = writer, reader

    async def upgrade(self) -> int:
        """Open (which migrates the schema) and tell the version."""
        await self.open()
        return len(sql.MIGRATIONS)

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        for thread in (writer, reader):
            if thread is not None:
                await thread.stop()
        self._unlock_file()

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def _deliver(self, changes: Sequence[JobChange]) -> None:
        for listener in self._listeners:
            listener(changes)

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

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        migrate(conn)
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA query_only = 1")
        return conn

    async def _write(self, work: Work[T]) -> T:
        if self._writer is None:
            raise StoreError("the SQLite store is not open")
        return await self._writer.call(work)

    async def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            raise StoreError("the SQLite store is not open")
        return await self._reader.call(lambda conn: (read(conn), NO_CHANGES))

    async def _change(self, change: Callable[[sqlite3.Connection], list[Job]]) -> list[Job]:
        """Write: ``change`` returns the jobs it saved; each becomes a JobChange."""

        def work(conn: sqlite3.Connection) -> tuple[list[Job], Sequence[JobChange]]:
            jobs = change(conn)
            return jobs, [_save(conn, job) for job in jobs]

        return await self._write(work)

    # -- jobs ---------------------------------------------------------------------------------

    async def create_job(
        self, job: Job, *, idempotency: Idempotency | None = None, resource_key: str | None = None
    ) -> Created:
        def work(conn: sqlite3.Connection) -> tuple[Created, Sequence[JobChange]]:
            if idempotency is not None:
                replay = _replay(conn, job.owner, idempotency)
                if replay is not None:
                    return replay, NO_CHANGES
            if resource_key is not None:
                holder = conn.execute(sql.SELECT_RESOURCE_HOLDER, (resource_key,)).fetchone()
                if holder is not None:
                    raise ResourceBusy(resource_key, holder[0])
            key = idempotency.key if idempotency else None
            request_hash = idempotency.request_hash if idempotency else None
            conn.execute(sql.INSERT_JOB, (*_job_values(job), resource_key, key, request_hash))
            return Created(job, created=True), (JobChange(job.id, job),)

        return await self._write(work)

    async def replay_idempotent(self, owner: str, idempotency: Idempotency) -> Created | None:
        return await self._read(lambda conn: _replay(conn, owner, idempotency))

    async def set_answer_status(self, job_id: str, status: int) -> None:
        def work(conn: sqlite3.Connection) -> tuple[None, Sequence[JobChange]]:
            conn.execute(sql.UPDATE_ANSWER_STATUS, (status, job_id))
            return None, NO_CHANGES

        await self._write(work)

    async def get_job(self, job_id: str, owner: str | None = None) -> Job | None:
        return await self._read(lambda conn: _select_job(conn, job_id, owner))

    async def list_jobs(self, query: JobQuery) -> list[Job]:
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
        return await self._read(lambda conn: _select_jobs(conn, statement, params))

    async def claim_jobs(
        self, worker: str, *, operations: Collection[str], limit: int, lease_seconds: float
    ) -> list[Job]:
        def change(conn: sqlite3.Connection) -> list[Job]:
            queued = _select_jobs(conn, sql.SELECT_QUEUED, (_ids(operations), limit))
            now = model.utcnow()
            expires = now + timedelta(seconds=lease_seconds)
            return [model.start(job, now=now, worker=worker, lease_expires=expires) for job in queued]

        return await self._change(change) if operations and limit > 0 else []

    async def _change_held(self, job_id: str, worker: str, transition: Callable[[Job], Job]) -> Job | None:
        def change(conn: sqlite3.Connection) -> list[Job]:
            job = _select_job(conn, job_id)
            if job is None or job.state is not JobState.RUNNING or job.lease_owner != worker:
                return []
            return [transition(job)]

        changed = await self._change(change)
        return changed[0] if changed else None

    async def report_progress(
        self, job_id: str, worker: str, *, message: str | None, progress: int | None
    ) -> Job | None:
        return await self._change_held(
            job_id,
            worker,
            lambda job: model.report(job, now=model.utcnow(), message=message, progress=progress),
        )

    async def finish_job(self, job_id: str, worker: str, outcome: Outcome) -> Job | None:
        return await self._change_held(job_id, worker, lambda job: apply_outcome(job, outcome, now=model.utcnow()))

    async def renew_leases(self, worker: str, job_ids: Collection[str], lease_seconds: float) -> set[str]:
        expires = to_us(model.utcnow() + timedelta(seconds=lease_seconds))

        def work(conn: sqlite3.Connection) -> tuple[set[str], Sequence[JobChange]]:
            rows = conn.execute(sql.RENEW_LEASES, (expires, worker, _ids(job_ids))).fetchall()
            return {row[0] for row in rows}, NO_CHANGES

        return await self._write(work) if job_ids else set()

    async def release_jobs(self, worker: str, job_ids: Collection[str]) -> list[Job]:
        def change(conn: sqlite3.Connection) -> list[Job]:
            held = _select_jobs(conn, sql.SELECT_HELD, (worker, _ids(job_ids)))
            now = model.utcnow()
            return [model.lose(job, now=now) for job in held]

        return await self._change(change) if job_ids else []

    async def recover_jobs(self, *, expired_only: bool = True) -> list[Job]:
        def change(conn: sqlite3.Connection) -> list[Job]:
            now = model.utcnow()
            if expired_only:
                running = _select_jobs(conn, sql.SELECT_EXPIRED, (to_us(now),))
            else:
                running = _select_jobs(conn, sql.SELECT_RUNNING, ())
            return [model.lose(job, now=now) for job in running]

        return await self._change(change)

    async def cancel_job(self, job_id: str, owner: str | None = None) -> Job | None:
        def work(conn: sqlite3.Connection) -> tuple[Job | None, Sequence[JobChange]]:
            job = _select_job(conn, job_id, owner)
            if job is None:
                return None, NO_CHANGES
            if job.is_terminal:
                raise JobAlreadyTerminal(job)
            cancelled = model.request_cancel(job, now=model.utcnow())
            return cancelled, ((_save(conn, cancelled),) if cancelled is not job else NO_CHANGES)

        return await self._write(work)

    async def delete_job(self, job_id: str, owner: str | None = None) -> bool:
        def work(conn: sqlite3.Connection) -> tuple[bool, Sequence[JobChange]]:
            job = _select_job(conn, job_id, owner)
            if job is None:
                return False, NO_CHANGES
            if not job.is_terminal:
                raise JobNotTerminal(job)
            conn.execute(sql.DELETE_JOB, (job_id,))
            return True, (JobChange(job_id, None),)

        return await self._write(work)

    async def purge_jobs(self, ended_before: datetime) -> int:
        def work(conn: sqlite3.Connection) -> tuple[int, Sequence[JobChange]]:
            rows = conn.execute(sql.PURGE_JOBS, (to_us(ended_before),)).fetchall()
            return len(rows), [JobChange(row[0], None) for row in rows]

        return await self._write(work)

    # -- resources ----------------------------------------------------------------------------

    async def put_resource(self, kind: str, key: str, data: dict[str, Any], *, only_if_absent: bool = False) -> bool:
        statement = sql.PUT_RESOURCE_IF_ABSENT if only_if_absent else sql.PUT_RESOURCE

        def work(conn: sqlite3.Connection) -> tuple[bool, Sequence[JobChange]]:
            cursor = conn.execute(statement, (kind, key, orjson.dumps(data).decode()))
            return cursor.rowcount > 0, NO_CHANGES

        return await self._write(work)

    async def get_resource(self, kind: str, key: str) -> dict[str, Any] | None:
        def read(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(sql.GET_RESOURCE, (kind, key)).fetchone()
            return None if row is None else dict(orjson.loads(row[0]))

        return await self._read(read)

    async def list_resources(self, kind: str) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(orjson.loads(row[0])) for row in conn.execute(sql.LIST_RESOURCES, (kind,))]

        return await self._read(read)

    async def delete_resource(self, kind: str, key: str) -> bool:
        def work(conn: sqlite3.Connection) -> tuple[bool, Sequence[JobChange]]:
            return conn.execute(sql.DELETE_RESOURCE, (kind, key)).rowcount > 0, NO_CHANGES

        return await self._write(work)


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
