"""The PostgreSQL store: any number of API and worker processes share one database (SPEC §8).

Open it with ``open_store("postgresql://user@host:5432/db?pool_size=10")``. Query options:

- ``pool_size`` (default 10): connections kept by this process, plus one for ``LISTEN``;
- ``pool_timeout`` (seconds, default 10): how long a call waits for a connection before it raises
  :class:`~tarefa.store.StoreUnavailable`;
- ``writers`` (default 1): how many transactions of writes this process runs at once (see below);
- ``reconnect_delay``, ``heartbeat``, ``catch_up_margin`` (seconds): see *Change announcements*;
- anything else is a libpq connection parameter (``sslmode=require``, ``application_name=...``).

Jobs are claimed with ``SELECT ... FOR UPDATE SKIP LOCKED``; a resource key is held by a partial
unique index over non-terminal jobs, so two processes can never both start work on one resource.
Every change is applied with the pure transitions of :mod:`tarefa.model` on a row locked with
``FOR UPDATE``, so ``last_modified`` stays strictly increasing per job.

*Group commit.* Writes share transactions: every write waiting when the writer becomes free goes
into its next transaction, which commits (and announces) them all at once; each call still returns
only after its own change is committed, and a failing call fails alone, undoing nothing of the
others. Reads go straight to the pool, one statement each. See :mod:`tarefa.store.postgres_batch`.

*Change announcements.* Every changing transaction also sends a ``NOTIFY`` with the changed jobs
(or only their ids when a job is too large for a notification). After the commit, the writing store
calls its own listeners directly; one ``LISTEN`` connection per store hears the other processes'
changes (its own echoes are skipped). That connection sends a heartbeat every ``heartbeat`` seconds
and, when it is lost, reconnects with a growing delay starting at ``reconnect_delay``; once back,
it re-reads every job changed (and every job deleted) since ``catch_up_margin`` seconds before it
last knew itself connected, and hands those to the listeners, so no change is missed. The margin
covers transactions in flight and clock differences between machines: timestamps and leases use
each process's clock, which should be kept in sync (NTP). The payloads and the ``LISTEN``
connection live in :mod:`tarefa.store.postgres_listen`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from .. import model
from ..model import Job, JobError, JobState, utcnow
from . import InvalidStoreURL
from . import postgres_sql as q
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
from .postgres_batch import Cursor, GroupCommit, replace_broken_connections, store_error
from .postgres_listen import JOB_FIELDS, TIME_FIELDS, ChangeFeed, Connection, encode_changes

if TYPE_CHECKING:
    from .base import Store

logger = logging.getLogger("tarefa.store.postgres")

#: Jobs deleted per transaction by :meth:`PostgresStore.purge_jobs`.
PURGE_BATCH = 1000
#: How long the ids of deleted jobs are kept for listeners catching up after a reconnection.
DELETED_IDS_RETENTION = timedelta(days=1)
_CREATE_ATTEMPTS = 5

_Number = TypeVar("_Number", int, float)
_T = TypeVar("_T")


class PostgresStore:
    """A :class:`~tarefa.store.Store` on PostgreSQL (psycopg 3, one connection pool per process)."""

    exclusive: bool = False

    def __init__(
        self,
        url: str,
        *,
        pool_size: int | str = 10,
        pool_timeout: float | str = 10.0,
        writers: int | str = 1,
        reconnect_delay: float | str = 0.1,
        heartbeat: float | str = 10.0,
        catch_up_margin: float | str = 10.0,
        **connection_options: str,
    ) -> None:
        self.pool_size = _positive("pool_size", pool_size, int)
        self._pool_timeout = _positive("pool_timeout", pool_timeout, float)
        self._conninfo = _conninfo(url, connection_options)
        self._origin = secrets.token_hex(8)
        self._listeners: list[ChangeListener] = []
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._opening = asyncio.Lock()
        self._writer = GroupCommit(
            self._open_pool,
            lambda changes: encode_changes(self._origin, changes),
            self._emit,
            writers=_positive("writers", writers, int),
            pool_timeout=self._pool_timeout,
        )
        self._feed = ChangeFeed(
            self._conninfo,
            self._origin,
            read=self._read_changes,
            changes_since=self._changes_since,
            emit=self._emit,
            reconnect_delay=_positive("reconnect_delay", reconnect_delay, float),
            heartbeat=_positive("heartbeat", heartbeat, float),
            margin=timedelta(seconds=_positive("catch_up_margin", catch_up_margin, float)),
        )

    # -- life cycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Migrate the schema if needed, open the pool and start listening. Idempotent."""
        async with self._opening:
            if self._pool is not None:
                return
            await self.upgrade()
            pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
                self._conninfo,
                min_size=self.pool_size,
                max_size=self.pool_size,
                open=False,
                kwargs={"autocommit": True},  # a read is one statement; writes send their own BEGIN
                timeout=self._pool_timeout,
                name="tarefa",
            )
            try:
                with _translated_errors():
                    await pool.open(wait=True, timeout=self._pool_timeout)
                    await self._feed.start()
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            self._writer.start()

    async def close(self) -> None:
        """Stop listening and close every connection. The store can be opened again."""
        async with self._opening:
            if self._pool is None:
                return
            await self._writer.stop()
            await self._feed.stop()
            pool, self._pool = self._pool, None
            await pool.close()

    async def upgrade(self) -> int:
        """Apply the pending schema migrations and return the schema version.

        Runs under an advisory lock, so processes starting together migrate one after the other.
        Raises :class:`~tarefa.store.SchemaTooNew` if a newer tarefa already migrated the database.
        """
        latest = len(q.MIGRATIONS)
        with _translated_errors():
            async with await psycopg.AsyncConnection.connect(self._conninfo) as conn:
                cursor = conn.cursor(row_factory=dict_row)
                await cursor.execute(q.LOCK_MIGRATIONS, {"key": q.MIGRATION_LOCK})
                version = await _schema_version(cursor)
                if version > latest:
                    raise SchemaTooNew(
                        f"the database schema is at version {version} but this tarefa knows versions up"
                        f" to {latest} only: run the newer tarefa, or upgrade this one"
                    )
                for script in q.MIGRATIONS[version:]:
                    await cursor.execute(script)
                if version < latest:
                    await cursor.execute(q.CLEAR_VERSION)
                    await cursor.execute(q.INSERT_VERSION, {"version": latest})
                    logger.info("migrated the tarefa schema from version %d to %d", version, latest)
        return latest

    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener`` on the event loop with every committed change, from any process."""
        self._listeners.append(listener)

    @property
    def listening(self) -> asyncio.Event:
        """Set while the ``LISTEN`` connection is up (cleared while it reconnects)."""
        return self._feed.listening

    @property
    def reconnects(self) -> int:
        """How many times the ``LISTEN`` connection was re-established."""
        return self._feed.reconnects

    @property
    def listen_backend_pid(self) -> int | None:
        """The server process id of the ``LISTEN`` connection, or None when disconnected."""
        return self._feed.backend_pid

    # -- jobs --------------------------------------------------------------------------------------

    async def create_job(
        self, job: Job, *, idempotency: Idempotency | None = None, resource_key: str | None = None
    ) -> Created:
        """Insert a queued job, or replay its idempotency key (see :class:`~tarefa.store.Store`)."""
        params = {
            **_job_params(job),
            "idempotency_key": idempotency.key if idempotency else None,
            "request_hash": idempotency.request_hash if idempotency else None,
            "resource_key": resource_key,
        }

        async def insert(tx: _Transaction) -> Created:
            # Each statement sees the latest commits, so a conflict found by the insert is visible
            # to the lookups that follow; a conflicting job that ended meanwhile means try again.
            for _ in range(_CREATE_ATTEMPTS):
                if idempotency is not None and (replay := await _replay(tx, job.owner, idempotency)):
                    return replay
                if await tx.row(q.INSERT_JOB, params) is not None:
                    tx.changes.append(JobChange(job.id, job))
                    return Created(job, created=True)
                if resource_key is not None:
                    holder = await tx.row(q.SELECT_RESOURCE_HOLDER, {"resource_key": resource_key})
                    if holder is not None:
                        raise ResourceBusy(resource_key, holder["id"])
            raise StoreError(f"could not insert job {job.id}: a job with this id exists")

        return await self._write(insert)

    async def replay_idempotent(self, owner: str, idempotency: Idempotency) -> Created | None:
        """The job first created with this key by ``owner``; None if the key is new;
        :class:`~tarefa.store.IdempotencyMismatch` if it came with another request."""
        return await self._read(lambda tx: _replay(tx, owner, idempotency))

    async def set_answer_status(self, job_id: str, status: int) -> None:
        """Record the status code of the first answer, for idempotent replays."""
        await self._write(lambda tx: tx.execute(q.SET_ANSWER_STATUS, {"id": job_id, "status": status}))

    async def get_job(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or None if unknown or not owned by ``owner``."""
        jobs = await self._read(lambda tx: tx.jobs(q.SELECT_JOB, {"id": job_id, "owner": owner}))
        return jobs[0] if jobs else None

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        """A page of jobs in ``query``'s order, after ``query.after`` (keyset paging)."""
        statement, params = q.list_jobs(query)
        return await self._read(lambda tx: tx.jobs(statement, params))

    async def claim_jobs(
        self, worker: str, *, operations: Collection[str], limit: int, lease_seconds: float
    ) -> list[Job]:
        """Start up to ``limit`` queued jobs, oldest first; locked rows are skipped, never shared."""
        if not operations or limit <= 0:
            return []

        async def claim(tx: _Transaction) -> list[Job]:
            queued = await tx.jobs(q.CLAIM_JOBS, {"operations": list(operations), "limit": limit})
            now = utcnow()
            expires = now + timedelta(seconds=lease_seconds)
            return await tx.save([model.start(job, now=now, worker=worker, lease_expires=expires) for job in queued])

        return await self._write(claim)

    async def report_progress(
        self, job_id: str, worker: str, *, message: str | None, progress: int | None
    ) -> Job | None:
        """A new message and/or progress on a job ``worker`` holds; None if it does not."""

        def change(job: Job) -> Job | None:
            if not _holds(job, worker):
                return None
            return model.report(job, now=utcnow(), message=message, progress=progress)

        return await self._change_job(job_id, None, change)

    async def finish_job(self, job_id: str, worker: str, outcome: Outcome) -> Job | None:
        """End a job ``worker`` holds with ``outcome``; None if it does not hold it."""

        def change(job: Job) -> Job | None:
            return apply_outcome(job, outcome, now=utcnow()) if _holds(job, worker) else None

        return await self._change_job(job_id, None, change)

    async def renew_leases(self, worker: str, job_ids: Collection[str], lease_seconds: float) -> set[str]:
        """Extend ``worker``'s leases (not a visible change); returns the ids it still holds."""
        if not job_ids:
            return set()
        params = {
            "ids": list(job_ids),
            "worker": worker,
            "lease_expires": utcnow() + timedelta(seconds=lease_seconds),
        }
        rows = await self._write(lambda tx: tx.rows(q.RENEW_LEASES, params))
        return {row["id"] for row in rows}

    async def release_jobs(self, worker: str, job_ids: Collection[str]) -> list[Job]:
        """Apply :func:`~tarefa.model.lose` to these jobs that ``worker`` still holds."""
        if not job_ids:
            return []

        async def release(tx: _Transaction) -> list[Job]:
            held = await tx.jobs(q.SELECT_HELD_JOBS, {"ids": list(job_ids), "worker": worker})
            now = utcnow()
            return await tx.save([model.lose(job, now=now) for job in held])

        return await self._write(release)

    async def recover_jobs(self, *, expired_only: bool = True) -> list[Job]:
        """Apply :func:`~tarefa.model.lose` to running jobs whose lease expired (or to all)."""

        async def recover(tx: _Transaction) -> list[Job]:
            lost = await tx.jobs(q.SELECT_LOST_JOBS, {"now": utcnow() if expired_only else None})
            now = utcnow()
            return await tx.save([model.lose(job, now=now) for job in lost])

        return await self._write(recover)

    async def cancel_job(self, job_id: str, owner: str | None = None) -> Job | None:
        """Cancel a queued job, or ask a running one to stop; :class:`JobAlreadyTerminal` if ended."""

        def change(job: Job) -> Job:
            if job.is_terminal:
                raise JobAlreadyTerminal(job)
            return model.request_cancel(job, now=utcnow())

        return await self._change_job(job_id, owner, change)

    async def delete_job(self, job_id: str, owner: str | None = None) -> bool:
        """Delete an ended job; False if unknown; :class:`JobNotTerminal` if it has not ended."""

        async def delete(tx: _Transaction) -> bool:
            jobs = await tx.jobs(q.SELECT_JOB_FOR_UPDATE, {"id": job_id, "owner": owner})
            if not jobs:
                return False
            if not jobs[0].is_terminal:
                raise JobNotTerminal(jobs[0])
            await tx.execute(q.DELETE_JOB, {"id": job_id, "now": utcnow()})
            tx.changes.append(JobChange(job_id, None))
            return True

        return await self._write(delete)

    async def purge_jobs(self, ended_before: datetime) -> int:
        """Delete the jobs that ended before ``ended_before``, in batches; returns how many."""

        async def purge(tx: _Transaction) -> int:
            params = {"ended_before": ended_before, "batch": PURGE_BATCH, "now": utcnow()}
            rows = await tx.rows(q.PURGE_JOBS, params)
            tx.changes.extend(JobChange(row["id"], None) for row in rows)
            return len(rows)

        purged = 0
        while (count := await self._write(purge)) > 0:
            purged += count
            if count < PURGE_BATCH:
                break
        before = utcnow() - DELETED_IDS_RETENTION
        await self._write(lambda tx: tx.execute(q.FORGET_DELETED_JOBS, {"before": before}))
        return purged

    # -- resources ---------------------------------------------------------------------------------

    async def put_resource(self, kind: str, key: str, data: dict[str, Any], *, only_if_absent: bool = False) -> bool:
        """Store a document; with ``only_if_absent``, False (and no change) if the key exists."""
        statement = q.ADD_RESOURCE if only_if_absent else q.PUT_RESOURCE
        params = {"kind": kind, "key": key, "data": _jsonb(data)}
        return await self._write(lambda tx: tx.execute(statement, params)) > 0

    async def get_resource(self, kind: str, key: str) -> dict[str, Any] | None:
        """The document, or None."""
        row = await self._read(lambda tx: tx.row(q.GET_RESOURCE, {"kind": kind, "key": key}))
        return None if row is None else dict(row["data"])

    async def list_resources(self, kind: str) -> list[dict[str, Any]]:
        """Every document of ``kind``, in key order (byte order)."""
        rows = await self._read(lambda tx: tx.rows(q.LIST_RESOURCES, {"kind": kind}))
        return [dict(row["data"]) for row in rows]

    async def delete_resource(self, kind: str, key: str) -> bool:
        """Delete a document; False if it did not exist."""
        return await self._write(lambda tx: tx.execute(q.DELETE_RESOURCE, {"kind": kind, "key": key})) > 0

    # -- internals ---------------------------------------------------------------------------------

    def _open_pool(self) -> AsyncConnectionPool[Connection]:
        if self._pool is None:
            raise StoreError("the PostgreSQL store is not open: call 'await store.open()' first")
        return self._pool

    async def _read(self, work: Callable[[_Transaction], Awaitable[_T]]) -> _T:
        """Run ``work``'s reads on a pool connection, each statement on its own (writes go
        through :meth:`_write`). A read found a broken connection goes again on another one."""
        pool = self._open_pool()
        deadline = time.monotonic() + self._pool_timeout
        for attempt in (1, 2):
            conn: Connection | None = None
            try:
                timeout = max(0.0, deadline - time.monotonic())
                async with pool.connection(timeout) as conn, conn.cursor(row_factory=dict_row) as cursor:
                    return await work(_Transaction(cursor))
            except psycopg.Error as exc:
                if attempt == 2 or conn is None or not conn.broken:
                    raise store_error(exc) from exc
            await replace_broken_connections(pool)
        raise AssertionError("unreachable")

    async def _write(self, work: Callable[[_Transaction], Awaitable[_T]]) -> _T:
        """Run ``work`` in the next group commit; its changes are announced with it and, once
        committed, to our listeners (:mod:`tarefa.store.postgres_batch`)."""
        return await self._writer.write(lambda cursor, changes: work(_Transaction(cursor, changes)))

    async def _change_job(self, job_id: str, owner: str | None, change: Callable[[Job], Job | None]) -> Job | None:
        """Lock one job, apply ``change`` to it and save the result if it differs."""

        async def apply(tx: _Transaction) -> Job | None:
            jobs = await tx.jobs(q.SELECT_JOB_FOR_UPDATE, {"id": job_id, "owner": owner})
            if not jobs:
                return None
            changed = change(jobs[0])
            if changed is None or changed is jobs[0]:
                return changed
            await tx.save([changed])
            return changed

        return await self._write(apply)

    def _emit(self, changes: Sequence[JobChange]) -> None:
        if not changes:
            return
        batch = list(changes)
        for listener in tuple(self._listeners):
            try:
                listener(batch)
            except Exception:
                logger.exception("a job change listener failed")

    async def _read_changes(self, job_ids: Sequence[str]) -> list[JobChange]:
        jobs = await self._read(lambda tx: tx.jobs(q.SELECT_JOBS, {"ids": list(job_ids)}))
        found = {job.id: job for job in jobs}
        return [JobChange(job_id, found.get(job_id)) for job_id in job_ids]

    async def _changes_since(self, since: datetime) -> list[JobChange]:
        # Two reads, not one snapshot: a job deleted in between is heard changed, then deleted.
        jobs = await self._read(lambda tx: tx.jobs(q.CHANGED_SINCE, {"since": since}))
        deleted = await self._read(lambda tx: tx.rows(q.DELETED_SINCE, {"since": since}))
        return [JobChange(job.id, job) for job in jobs] + [JobChange(row["id"], None) for row in deleted]


@dataclasses.dataclass
class _Transaction:
    """A cursor (in a transaction, for a write) and the job changes to announce when it commits."""

    cursor: Cursor
    changes: list[JobChange] = dataclasses.field(default_factory=list)

    async def execute(self, statement: str, params: dict[str, Any]) -> int:
        await self.cursor.execute(statement, params)
        return self.cursor.rowcount

    async def rows(self, statement: str | sql.Composed, params: dict[str, Any]) -> list[DictRow]:
        await self.cursor.execute(statement, params)
        return await self.cursor.fetchall()

    async def row(self, statement: str, params: dict[str, Any]) -> DictRow | None:
        await self.cursor.execute(statement, params)
        return await self.cursor.fetchone()

    async def jobs(self, statement: str | sql.Composed, params: dict[str, Any]) -> list[Job]:
        return [_row_to_job(row) for row in await self.rows(statement, params)]

    async def save(self, jobs: list[Job]) -> list[Job]:
        """Write these (locked) jobs back, to be announced with the commit."""
        if len(jobs) == 1:
            await self.cursor.execute(q.UPDATE_JOB, _job_params(jobs[0]))
        elif jobs:
            rows = [_job_params(job) for job in jobs]
            columns = {name: [row[name] for row in rows] for name in q.UPDATE_JOBS_COLUMNS}
            await self.cursor.execute(q.UPDATE_JOBS, columns)
        if jobs:
            self.changes.extend(JobChange(job.id, job) for job in jobs)
        return jobs


# -- helpers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    """Driver exceptions become the store's own (module doc of :mod:`tarefa.store.base`)."""
    try:
        yield
    except psycopg.Error as exc:
        raise store_error(exc) from exc


async def _schema_version(cursor: psycopg.AsyncCursor[DictRow]) -> int:
    await cursor.execute(q.VERSION_TABLE_EXISTS)
    row = await cursor.fetchone()
    if row is None or not row["present"]:
        await cursor.execute(q.CREATE_VERSION_TABLE)
        return 0
    await cursor.execute(q.SELECT_VERSION)
    row = await cursor.fetchone()
    return int(row["version"]) if row is not None else 0


async def _replay(tx: _Transaction, owner: str, idempotency: Idempotency) -> Created | None:
    row = await tx.row(q.SELECT_IDEMPOTENT_JOB, {"owner": owner, "key": idempotency.key})
    if row is None:
        return None
    if row["request_hash"] != idempotency.request_hash:
        raise IdempotencyMismatch(idempotency.key, row["id"])
    return Created(_row_to_job(row), created=False, answer_status=row["answer_status"])


def _holds(job: Job, worker: str) -> bool:
    return job.state is JobState.RUNNING and job.lease_owner == worker


# -- rows ------------------------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _row_to_job(row: DictRow) -> Job:
    error = None if row["error_code"] is None else JobError(row["error_code"], row["error_message"] or "")
    values = {name: row[name] for name in JOB_FIELDS if name != "error"}
    values.update({name: _utc(values[name]) for name in TIME_FIELDS})
    return Job(**{**values, "state": JobState(row["state"]), "error": error})


def _jsonb(value: Any) -> Jsonb | None:
    """JSON as the SQLite store writes it (orjson: NaN becomes null, like there)."""
    return None if value is None else Jsonb(value, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _job_params(job: Job) -> dict[str, Any]:
    params = {name: getattr(job, name) for name in JOB_FIELDS}
    params["state"] = job.state.value
    params["result"] = _jsonb(job.result)
    params["input"] = _jsonb(job.input)
    params["error_code"] = job.error.code if job.error else None
    params["error_message"] = job.error.message if job.error else None
    return params


# -- options -----------------------------------------------------------------------------------------


def _positive(name: str, value: str | float, kind: Callable[[Any], _Number]) -> _Number:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = kind(0)
    if number <= 0:
        raise InvalidStoreURL(f"the PostgreSQL store option {name} must be a positive number, not {value!r}")
    return number


def _conninfo(url: str, options: dict[str, str]) -> str:
    """The libpq connection string: the URL plus any extra query option (``sslmode=...``)."""
    try:
        params = {**conninfo_to_dict(url), **options}
        params.setdefault("connect_timeout", 10)
        return make_conninfo("", **params)
    except psycopg.ProgrammingError as exc:
        raise InvalidStoreURL(f"bad PostgreSQL URL or option: {exc}") from None


if TYPE_CHECKING:

    def _is_a_store(store: PostgresStore) -> Store:
        return store
