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
``FOR UPDATE``, so ``last_modified`` stays strictly increasing per job; but the hot writes of a
job, each one statement: the insert, the claim (:func:`tarefa.model.start` written in SQL, held to
it by the tests), the end of a job claimed here (the transition applied to the version this store
saved, written only if the row is still that version), the status of the first answer. Alone in
a batch, such a statement is its own transaction and sends its own notification.

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

*Keys seen.* Every keyed call looks its ``Idempotency-Key`` up before its endpoint runs, and nearly
every key is new. A filter of the ``(owner, key)`` pairs of every keyed job
(:mod:`~tarefa.store.seen_keys`) answers "no job has it" without that read: it is filled at open by
a scan in the background, from this store's own inserts before they commit, and from the pairs
that the other processes' notifications name, also when they are caught up after a reconnection.
It answers only while the ``LISTEN`` connection has been heard (a notification, an echo of our
own, a heartbeat) within the last :data:`KEYS_FRESH` seconds; else, and until the scan is done,
every key is read as before. A notification that does not name its keys (from an older tarefa, or
for a key too long to name) turns the filter off until the process restarts.

The filter never misses a key stored before it was filled or handed on. A repeat that comes in
while the first call is still being stored, or on another process before that process has read the
first insert's notification (about a millisecond after its commit; longer while it is busy), may
pass the filter and run its endpoint again. If the endpoint's own checks pass, the insert meets the
first job's key and answers the replay; a check that the first job has changed the answer to (a
resource it created, a busy resource key, a full queue) answers its error instead. There is never a
second job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ..model import Job, JobError, JobEvent, JobState, event_of, utcnow
from . import InvalidStoreURL, steps
from . import postgres_sql as q
from .base import (
    Claim,
    Created,
    Idempotency,
    JobChange,
    Outcome,
    Precondition,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
    apply_outcome,
)
from .columns import NAMES, Codec, json_text
from .documents import Documents
from .jobstore import JobStore
from .outbox import CallbackAttempt, CallbackDelivery, deliveries_for
from .postgres_batch import Cursor, GroupCommit, replace_broken_connections, store_error
from .postgres_listen import ChangeFeed, Connection, announcement, announcement_head, encode_changes
from .seen_keys import KeysSeen, SeenKeys
from .steps import Program, numbered, run_async

logger = logging.getLogger("tarefa.store.postgres")

#: How long the ids of deleted jobs are kept for listeners catching up after a reconnection.
DELETED_IDS_RETENTION = timedelta(days=1)
#: The filter of keys seen answers only while the LISTEN connection was heard this recently (seconds).
KEYS_FRESH = 0.25
_Number = TypeVar("_Number", int, float)
_T = TypeVar("_T")


class PostgresStore(JobStore, Documents):
    """A :class:`~tarefa.store.JobStore` on PostgreSQL (psycopg 3, one connection pool per process)."""

    exclusive: bool = False
    records_answers_by: bool = True

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
        super().__init__()
        self.pool_size = _positive("pool_size", pool_size, int)
        self._pool_timeout = _positive("pool_timeout", pool_timeout, float)
        self._conninfo = _conninfo(url, connection_options)
        self._origin = secrets.token_hex(8)
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._opening = asyncio.Lock()
        # The keys seen (module doc): None while closed or turned off; answers once scanned.
        self._keys: KeysSeen | None = None
        self._keys_unnamed = False  # an older tarefa's notification was heard: the filter is off
        self._key_scan: asyncio.Task[None] | None = None
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
            learn_keys=self._learn_keys,
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
            # Listening first, then the filter, before any insert of ours: a key inserted elsewhere
            # from now on is heard, and one committed before the scan is read by it.
            self._pool = pool
            self._writer.start()
            if not self._keys_unnamed:
                self._keys = KeysSeen(SeenKeys(), scanned=False)
                self._scan_keys_if_due(self._keys)

    async def close(self) -> None:
        """Stop listening and close every connection. The store can be opened again."""
        async with self._opening:
            if self._pool is None:
                return
            await self._writer.stop()
            await self._feed.stop()
            scan, self._key_scan, self._keys = self._key_scan, None, None
            if scan is not None:
                scan.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await scan
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

    # -- one-statement writes ------------------------------------------------------------------------
    # The hot writes of a job (its insert, its end, the status of its first answer) are one statement
    # each when nothing stands in their way; alone in a batch, that statement runs as the whole
    # transaction and announces itself (:mod:`tarefa.store.postgres_batch`, *Solo*). When it cannot
    # (a conflict, a job changed meanwhile), the full rule of :class:`JobStore` runs instead.

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
        """:meth:`JobStore.create_job`. A plain insert (no precondition, claim or callback) is tried
        first as one statement; on any conflict (id, idempotency key, busy resource key) nothing is
        inserted and the full rule runs, which finds which one."""
        keys = self._keys
        if idempotency is not None and keys is not None:  # added before the insert commits (keys seen)
            with keys.inserting(str(job.owner), idempotency.key):
                created = await self._create(job, idempotency, resource_key, precondition, claim, answer_by)
            self._scan_keys_if_due(keys)
            return created
        return await self._create(job, idempotency, resource_key, precondition, claim, answer_by)

    async def _create(
        self,
        job: Job,
        idempotency: Idempotency | None,
        resource_key: str | None,
        precondition: Precondition | None,
        claim: Claim | None,
        answer_by: datetime | None,
    ) -> Created:
        if precondition is None and claim is None and job.callback is None:
            params = _insert_params(job, resource_key, idempotency, answer_by)
            key = idempotency.key if idempotency is not None else None
            if await self._one_statement(q.INSERT_JOB_QUIET, q.INSERT_JOB_ANNOUNCED, params, job, key):
                return Created(job, created=True)
        try:
            created = await super().create_job(
                job, idempotency=idempotency, resource_key=resource_key, precondition=precondition, claim=claim,
                answer_by=answer_by,
            )  # fmt: skip
        except StoreError as exc:  # "a job with this id exists": ours, if an attempt's answer was lost
            if type(exc) is StoreError and await self.get_job(job.id) == job:
                return Created(job, created=True)
            raise
        return created

    async def claim_jobs(
        self, worker: str, *, operations: Collection[str], limit: int, lease_seconds: float
    ) -> list[Job]:
        """:meth:`JobStore.claim_jobs` in one statement (``CLAIM_JOBS_*``); the claimed jobs are
        remembered for their end. Alone in its batch, if a job it would claim wants a callback
        for its start, the full rule runs instead (it writes the outbox row in the claim's
        transaction)."""
        if not operations or limit <= 0:
            return []
        now = utcnow()
        params = {
            "operations": list(operations),
            "limit": limit,
            "now": now,
            "worker": worker,
            "lease_expires": now + timedelta(seconds=lease_seconds),
            "announce_head": announcement_head(self._origin),
        }

        async def write(
            cursor: Cursor, changes: list[JobChange], statement: str = q.CLAIM_JOBS_QUIET
        ) -> list[Job] | None:
            await cursor.execute(statement, params)
            every = await cursor.fetchall()  # one row at least: see CLAIM_JOBS_*
            rows = [row for row in every if row["id"] is not None]
            if not rows and every[0]["picked"]:  # refused: a job wants a callback for its start
                return None
            jobs = [_row_to_job(row) for row in rows]
            events = numbered([event_of(job) for job in jobs], [row["seq"] for row in rows])
            changes.extend(JobChange(job.id, job, event) for job, event in zip(jobs, events, strict=True))
            deliveries = deliveries_for(zip(jobs, events, strict=True), utcnow())
            if deliveries:  # never alone: the statement refused to claim such jobs
                await PgSteps(cursor, locking=True).do(steps.QueueCallbacks(deliveries))
            return jobs

        async def solo(cursor: Cursor, changes: list[JobChange]) -> list[Job] | None:
            return await write(cursor, changes, q.CLAIM_JOBS_ANNOUNCED)

        claimed = await self._writer.write(write, solo)
        if claimed is None:
            claimed = await super().claim_jobs(worker, operations=operations, limit=limit, lease_seconds=lease_seconds)
        for job in claimed:
            self._remember(job)
        return claimed

    async def finish_job(
        self, job_id: str, worker: str, outcome: Outcome, *, answer_status: int | None = None
    ) -> Job | None:
        """:meth:`JobStore.finish_job`. For a job claimed here, the outcome is applied (with the pure
        transition) to the job as this store last saved it, and saved in one statement only if the
        row is still that version; if anything changed it since (a cancel request, a renewed
        lease), the full rule runs: load the job locked, apply the outcome, save. An end that also
        records an ``answer_status`` takes the rule of :class:`JobStore` (two statements)."""
        if answer_status is not None:
            return await super().finish_job(job_id, worker, outcome, answer_status=answer_status)
        held = self._held.pop(job_id, None)
        if held is not None and held.state is JobState.RUNNING and held.lease_owner == worker and held.callback is None:
            ended = apply_outcome(held, outcome, now=utcnow())
            params = _held_params(ended, held)
            if await self._one_statement(q.UPDATE_HELD_JOB_QUIET, q.UPDATE_HELD_JOB_ANNOUNCED, params, ended):
                return ended
            finished = await super().finish_job(job_id, worker, outcome)
            if finished is None and await self.get_job(job_id) == ended:  # an attempt whose answer was lost
                return ended
            return finished
        return await super().finish_job(job_id, worker, outcome)

    async def replay_idempotent(self, owner: str, idempotency: Idempotency) -> Created | None:
        """:meth:`JobStore.replay_idempotent`; None without a read for a key the filter of keys
        seen has never held, while it may answer (module doc)."""
        keys = self._keys
        if keys is not None and self._feed.heard_within(KEYS_FRESH) and not keys.may_hold(str(owner), idempotency.key):
            return None
        return await super().replay_idempotent(owner, idempotency)

    async def set_answer_status(self, job_id: str, status: int) -> None:
        await self._sql(q.SET_ANSWER_STATUS, {"id": job_id, "status": status})

    async def _one_statement(
        self, quiet: str, announced: str, params: dict[str, Any], job: Job, key: str | None = None
    ) -> bool:
        """Save ``job`` (and its event) with one statement, in the next batch, or alone as its own
        transaction, announcing itself (``announced``); False if the statement changed no row.
        ``key``: the Idempotency-Key an insert stores, named in its announcement."""
        parts = announcement(self._origin, job, key)

        async def write(cursor: Cursor, changes: list[JobChange], statement: str = quiet) -> bool:
            await cursor.execute(statement, params if statement is quiet else {**params, **(parts or {})})
            row = await cursor.fetchone()
            if row is None:
                return False
            changes.append(JobChange(job.id, job, numbered([event_of(job)], [row["seq"]])[0], key))
            return True

        async def solo(cursor: Cursor, changes: list[JobChange]) -> bool:
            return await write(cursor, changes, announced)

        return await self._writer.write(write, solo if parts is not None else None)

    # -- documents ---------------------------------------------------------------------------------

    @property
    def documents(self) -> Documents:
        return self

    async def put_document(self, kind: str, key: str, data: dict[str, Any], *, only_if_absent: bool = False) -> bool:
        """Store a document; with ``only_if_absent``, False (and no change) if the key exists."""
        statement = q.ADD_DOCUMENT if only_if_absent else q.PUT_DOCUMENT
        params = {"kind": kind, "key": key, "data": _jsonb(data)}
        return await self._sql(statement, params) > 0

    async def get_document(self, kind: str, key: str) -> dict[str, Any] | None:
        """The document, or None."""
        row = await self._read_rows(q.GET_DOCUMENT, {"kind": kind, "key": key})
        return dict(row[0]["data"]) if row else None

    async def list_documents(self, kind: str) -> list[dict[str, Any]]:
        """Every document of ``kind``, in key order (byte order)."""
        return [dict(row["data"]) for row in await self._read_rows(q.LIST_DOCUMENTS, {"kind": kind})]

    async def delete_document(self, kind: str, key: str) -> bool:
        """Delete a document; False if it did not exist."""
        return await self._sql(q.DELETE_DOCUMENT, {"kind": kind, "key": key}) > 0

    # -- internals ---------------------------------------------------------------------------------

    def _open_pool(self) -> AsyncConnectionPool[Connection]:
        if self._pool is None:
            raise StoreError("the PostgreSQL store is not open: call 'await store.open()' first")
        return self._pool

    async def _on_connection(self, work: Callable[[Cursor], Awaitable[_T]]) -> _T:
        """Run ``work`` on a pool connection, each statement on its own (writes go through
        :meth:`_write`). A read that found a broken connection goes again on another one."""
        pool = self._open_pool()
        deadline = time.monotonic() + self._pool_timeout
        for attempt in (1, 2):
            conn: Connection | None = None
            try:
                timeout = max(0.0, deadline - time.monotonic())
                async with pool.connection(timeout) as conn, conn.cursor(row_factory=dict_row) as cursor:
                    return await work(cursor)
            except psycopg.Error as exc:
                if attempt == 2 or conn is None or not conn.broken:
                    raise store_error(exc) from exc
            await replace_broken_connections(pool)
        raise AssertionError("unreachable")

    async def _read(self, program: Callable[[], Program[_T]]) -> _T:
        return await self._on_connection(lambda cursor: run_async(program(), PgSteps(cursor, locking=False).do, []))

    async def _read_rows(self, statement: str | sql.Composed, params: dict[str, Any]) -> list[DictRow]:
        async def read(cursor: Cursor) -> list[DictRow]:
            await cursor.execute(statement, params)
            return await cursor.fetchall()

        return await self._on_connection(read)

    async def _write(self, program: Callable[[], Program[_T]]) -> _T:
        """Run the program in the next group commit; its changes are announced with it and, once
        committed, to our listeners (:mod:`tarefa.store.postgres_batch`)."""
        return await self._writer.write(
            lambda cursor, changes: run_async(program(), PgSteps(cursor, locking=True).do, changes)
        )

    async def _sql(self, statement: str, params: dict[str, Any]) -> int:
        """One statement in the next group commit; the number of rows it touched."""

        async def write(cursor: Cursor, changes: list[JobChange]) -> int:
            await cursor.execute(statement, params)
            return cursor.rowcount

        return await self._writer.write(write, solo=write)  # one statement: its own transaction when alone

    async def _read_changes(self, job_ids: Sequence[str]) -> list[JobChange]:
        jobs = [_row_to_job(row) for row in await self._read_rows(q.SELECT_JOBS, {"ids": list(job_ids)})]
        found = {job.id: job for job in jobs}
        return [JobChange(job_id, found.get(job_id)) for job_id in job_ids]

    async def _changes_since(self, since: datetime) -> list[JobChange]:
        # Two reads, not one snapshot: a job deleted in between is heard changed, then deleted.
        rows = await self._read_rows(q.CHANGED_SINCE, {"since": since})
        self._learn_keys([(row["owner"], row["idempotency_key"]) for row in rows if row["idempotency_key"] is not None])
        jobs = [_row_to_job(row) for row in rows]
        deleted = await self._read_rows(q.DELETED_SINCE, {"since": since})
        return [JobChange(job.id, job) for job in jobs] + [JobChange(row["id"], None) for row in deleted]

    # -- keys seen (module doc) ------------------------------------------------------------------

    def _learn_keys(self, pairs: Sequence[tuple[str, str]] | None) -> None:
        """Keys that jobs inserted elsewhere hold; None: a notification that cannot name them."""
        if pairs is None:
            if not self._keys_unnamed:
                logger.warning(
                    "a notification did not name the Idempotency-Keys it announced (sent by an older"
                    " tarefa, or a key too long to name): every keyed call reads its key until this"
                    " process restarts"
                )
            self._keys_unnamed, self._keys = True, None
            return
        keys = self._keys
        if keys is not None and pairs:
            for owner, key in pairs:
                keys.add(owner, key)
            self._scan_keys_if_due(keys)

    def _scan_keys_if_due(self, keys: KeysSeen) -> None:
        """Scan the keys into a new filter if :attr:`KeysSeen.due` (not filled yet, or crowded)."""
        if keys is self._keys and self._pool is not None and keys.due:
            keys.begin_scan()
            self._key_scan = asyncio.create_task(self._scan_keys(keys), name="tarefa-postgres-keys")

    async def _scan_keys(self, keys: KeysSeen) -> None:
        """Every keyed job's pair, into a filter sized for twice as many, which then takes over."""
        fresh: SeenKeys | None = None

        async def scan(cursor: Cursor) -> SeenKeys:
            await cursor.execute(q.COUNT_KEYS)
            row = await cursor.fetchone()
            into = SeenKeys(2 * (row["count"] if row is not None else 0))
            async for found in cursor.stream(q.SELECT_KEYS):
                into.add(found["owner"], found["idempotency_key"])
            return into

        try:
            fresh = await self._on_connection(scan)
        except StoreError as exc:
            logger.warning("cannot scan the Idempotency-Keys (%s): keyed calls read their keys meanwhile", exc)
        finally:
            keys.end_scan(fresh)


#: How long :class:`~tarefa.store.steps.SettledSeq` waits for transactions in flight (seconds).
SETTLE_TIMEOUT = 30.0


class PgSteps:
    """How PostgreSQL does each step of a job rule, on one cursor. In a write (``locking``), the
    jobs a step loads stay locked until the transaction ends."""

    def __init__(self, cursor: Cursor, *, locking: bool) -> None:
        self.cursor = cursor
        self.locking = locking

    async def do(self, step: steps.Step) -> Any:
        match step:
            case steps.LoadJob(job_id, owner):
                jobs = await self._jobs(q.SELECT_JOB_FOR_UPDATE if self.locking else q.SELECT_JOB,
                                        {"id": job_id, "owner": owner})  # fmt: skip
                return jobs[0] if jobs else None
            case steps.LoadQueued(operations, limit):
                return await self._jobs(q.CLAIM_JOBS, {"operations": list(operations), "limit": limit})
            case steps.LoadHeld(worker, job_ids):
                return await self._jobs(q.SELECT_HELD_JOBS, {"ids": list(job_ids), "worker": worker})
            case steps.LoadLost(expired_before):
                return await self._jobs(q.SELECT_LOST_JOBS, {"now": expired_before})
            case steps.LoadIdempotent(owner, key):
                row = await self._row(q.SELECT_IDEMPOTENT_JOB, {"owner": owner, "key": key})
                return (
                    None
                    if row is None
                    else steps.IdempotentEntry(_row_to_job(row), row["request_hash"], row["answer_status"])
                )
            case steps.LoadResourceHolder(resource_key):
                row = await self._row(q.SELECT_RESOURCE_HOLDER, {"resource_key": resource_key})
                return None if row is None else row["id"]
            case steps.LoadDocument(kind, key):
                statement = q.GET_DOCUMENT_FOR_UPDATE if self.locking else q.GET_DOCUMENT
                row = await self._row(statement, {"kind": kind, "key": key})
                return None if row is None else dict(row["data"])
            case steps.InsertDocuments(documents):
                return await self._insert_documents(documents)
            case steps.InsertJob(job, resource_key, idempotency, answer_by):
                return await self._insert(job, resource_key, idempotency, answer_by)
            case steps.SaveJobs(jobs):
                return await self._save(jobs)
            case steps.InsertClaimed(job, started, resource_key, idempotency, answer_by):
                first = await self._insert(job, resource_key, idempotency, answer_by)
                return None if first is None else (first, (await self._save((started,)))[0])
            case steps.SaveHeld(job, held, answer_status):
                return await self._save_held(job, held, answer_status)
            case steps.DeleteJob(job_id):
                await self.cursor.execute(q.DELETE_JOB, {"id": job_id, "now": utcnow()})
                await self.cursor.execute(q.DELETE_CALLBACKS, {"ids": [job_id]})
                return None
            case steps.PurgeJobs(ended_before, limit):
                params = {"ended_before": ended_before, "batch": limit, "now": utcnow()}
                ids = [row["id"] for row in await self._rows(q.PURGE_JOBS, params)]
                if ids:
                    await self.cursor.execute(q.DELETE_CALLBACKS, {"ids": ids})
                await self.cursor.execute(q.FORGET_DELETED_JOBS, {"before": utcnow() - DELETED_IDS_RETENTION})
                return ids
            case steps.RenewLeases(worker, job_ids, expires):
                params = {"ids": list(job_ids), "worker": worker, "lease_expires": expires}
                return {row["id"] for row in await self._rows(q.RENEW_LEASES, params)}
            case steps.SetAnswerStatus(job_id, status):
                await self.cursor.execute(q.SET_ANSWER_STATUS, {"id": job_id, "status": status})
                return None
            case steps.ListJobs(query):
                return await self._jobs(*q.list_jobs(query))
            case steps.ListEvents(job_id, after, limit):
                rows = await self._rows(q.SELECT_EVENTS, {"id": job_id, "after": after, "limit": limit})
                return [_row_to_event(row) for row in rows]
            case steps.SettledSeq():
                return await self._settled_seq()
            case steps.ListAllEvents(query, upto):
                return [_row_to_event(row) for row in await self._rows(*q.all_events(query, upto))]
            case steps.CountJobs():
                rows = await self._rows(q.COUNT_JOBS, {})
                return {(row["state"], row["operation"]): row["n"] for row in rows}
            case steps.ReadSchemaVersion():
                row = await self._row(q.SELECT_VERSION, {})
                return (0 if row is None else int(row["version"])), len(q.MIGRATIONS)
            case steps.CountQueued():
                row = await self._row(q.COUNT_QUEUED, {})
                return 0 if row is None else row["count"]
            case steps.QueueCallbacks(deliveries):
                columns = ("id", "job_id", "seq", "url", "body", "create_time", "attempts")
                params = {name: [getattr(d, name) for d in deliveries] for name in columns}
                await self.cursor.execute(q.INSERT_DELIVERIES, params)
                return None
            case steps.ClaimCallbacks(worker, limit, now, lease_until, recover):
                params = {"worker": worker, "limit": limit, "now": now, "lease_until": lease_until, "recover": recover}
                return [_row_to_delivery(row) for row in await self._rows(q.CLAIM_DELIVERIES, params)]
            case steps.RenewCallbackLeases(worker, delivery_ids, lease_until):
                params = {"worker": worker, "ids": list(delivery_ids), "lease_until": lease_until}
                await self.cursor.execute(q.RENEW_DELIVERIES, params)
                return None
            case steps.RecordCallbackAttempt(attempt, next_due):
                final = None if next_due is not None else attempt.outcome
                params = {**_attempt_params(attempt), "next_due": next_due, "final": final}
                await self.cursor.execute(q.RECORD_ATTEMPT, params)
                return None
            case steps.ListCallbackAttempts(job_id, after, limit):
                rows = await self._rows(q.SELECT_ATTEMPTS, {"id": job_id, "after": after, "limit": limit})
                return [_row_to_attempt(row) for row in rows]
        raise AssertionError(f"unknown step {step!r}")

    async def _settled_seq(self) -> int:
        """The highest ``seq`` stored, once every transaction that could still commit a lower
        one has ended. Identity values are given at insert, not at commit: a transaction in
        flight may hold a lower ``seq`` than one committed. Each got its transaction id before
        its ``seq`` (its first statement writes a job row), hence before the highest ``seq``
        was read, hence before the id this read takes for itself; so once no transaction with a
        lower id is in progress, every ``seq`` up to the one read is committed or never will be.
        A snapshot's ``xmax`` is no such bound: it lists nothing above the newest *completed* id.
        Costs one transaction id; while writers are busy, a few polls of a millisecond or so."""
        row = await self._row(q.LATEST_SEQ, {})
        assert row is not None
        deadline = time.monotonic() + SETTLE_TIMEOUT
        delay = 0.0005
        while True:
            waiting = await self._row(q.STILL_IN_PROGRESS, {"xid": row["xid"]})
            if waiting is None or not waiting["n"]:
                return int(row["seq"])
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"{waiting['n']} transaction(s) have been in progress for {SETTLE_TIMEOUT:.0f} s: the "
                    "events they may commit cannot be ordered yet (a session idle in a transaction?)"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def _rows(self, statement: str | sql.Composed, params: dict[str, Any]) -> list[DictRow]:
        await self.cursor.execute(statement, params)
        return await self.cursor.fetchall()

    async def _row(self, statement: str, params: dict[str, Any]) -> DictRow | None:
        await self.cursor.execute(statement, params)
        return await self.cursor.fetchone()

    async def _jobs(self, statement: str | sql.Composed, params: dict[str, Any]) -> list[Job]:
        return [_row_to_job(row) for row in await self._rows(statement, params)]

    async def _insert_documents(self, documents: tuple[tuple[str, str, dict[str, Any]], ...]) -> bool:
        """All or none: the rows inserted before a conflict are undone by a savepoint of their own."""
        params = {
            "kinds": [kind for kind, _, _ in documents],
            "keys": [key for _, key, _ in documents],
            "data": [_jsonb(data) for _, _, data in documents],
        }
        await self.cursor.execute(q.SAVEPOINT_DOCUMENTS)
        inserted = await self._rows(q.INSERT_DOCUMENTS, params)
        if len(inserted) < len(documents):
            await self.cursor.execute(q.UNDO_DOCUMENTS)
            return False
        await self.cursor.execute(q.RELEASE_DOCUMENTS)
        return True

    async def _insert(
        self, job: Job, resource_key: str | None, idempotency: Idempotency | None, answer_by: datetime | None
    ) -> JobEvent | None:
        row = await self._row(q.INSERT_JOB, _insert_params(job, resource_key, idempotency, answer_by))
        return None if row is None else numbered([event_of(job)], [row["seq"]])[0]

    async def _save_held(self, job: Job, held: Job, answer_status: int | None) -> JobEvent | None:
        row = await self._row(q.UPDATE_HELD_JOB_QUIET, _held_params(job, held))
        if row is None:
            return None
        if answer_status is not None:
            await self.cursor.execute(q.SET_ANSWER_STATUS, {"id": job.id, "status": answer_status})
        return numbered([event_of(job)], [row["seq"]])[0]

    async def _save(self, jobs: tuple[Job, ...]) -> list[JobEvent]:
        """Write these (locked) jobs back with their events."""
        if len(jobs) == 1:
            rows = await self._rows(q.UPDATE_JOB, _job_params(jobs[0]))
        else:
            params = [_job_params(job) for job in jobs]
            rows = await self._rows(q.UPDATE_JOBS, {name: [p[name] for p in params] for name in q.UPDATE_JOBS_COLUMNS})
        seqs = {row["job_id"]: row["seq"] for row in rows}
        return numbered([event_of(job) for job in jobs], [seqs[job.id] for job in jobs])


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


# -- rows ------------------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _jsonb(value: Any) -> Jsonb:
    """JSON as the SQLite store writes it (orjson: NaN becomes null, like there)."""
    return Jsonb(value, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json_text(value)


CODEC = Codec(encoders={"json": _jsonb}, decoders={"time": _utc})


def _row_to_job(row: DictRow) -> Job:
    return CODEC.decode_named(row)


def _job_params(job: Job) -> dict[str, Any]:
    return dict(zip(NAMES, CODEC.encode(job), strict=True))


def _insert_params(
    job: Job, resource_key: str | None, idempotency: Idempotency | None, answer_by: datetime | None
) -> dict[str, Any]:
    """The parameters of ``INSERT_JOB*``: the job's columns and what the insert checks and keeps."""
    return {
        **_job_params(job),
        "idempotency_key": idempotency.key if idempotency else None,
        "request_hash": idempotency.request_hash if idempotency else None,
        "resource_key": resource_key,
        "answer_by": answer_by,
    }


def _held_params(job: Job, held: Job) -> dict[str, Any]:
    """The parameters of ``UPDATE_HELD_JOB*``: ``job``, saved only if the row is still ``held``."""
    return {
        **_job_params(job),
        "held_by": held.lease_owner,
        "held_last_modified": held.last_modified,
        "held_lease_expires": held.lease_expires,
    }


def _idempotent_entry(row: DictRow) -> steps.IdempotentEntry:
    return steps.IdempotentEntry(_row_to_job(row), row["request_hash"], row["answer_status"])


def _row_to_event(row: DictRow) -> JobEvent:
    error = None if row["error_code"] is None else JobError(row["error_code"], row["error_message"] or "")
    return JobEvent(
        row["seq"], row["job_id"], _utc(row["time"]), JobState(row["state"]), row["message"], row["progress"],
        error, row["operation"], row["owner"],
    )  # fmt: skip


def _row_to_delivery(row: DictRow) -> CallbackDelivery:
    return CallbackDelivery(
        row["id"], row["job_id"], row["seq"], row["url"], bytes(row["body"]), _utc(row["create_time"]),
        row["attempts"],
    )  # fmt: skip


def _attempt_params(attempt: CallbackAttempt) -> dict[str, Any]:
    names = ("delivery_id", "job_id", "seq", "url", "time", "duration", "status", "error", "outcome")
    return {name: getattr(attempt, name) for name in names}


def _row_to_attempt(row: DictRow) -> CallbackAttempt:
    return CallbackAttempt(
        row["delivery_id"], row["job_id"], row["seq"], row["url"], _utc(row["time"]), row["duration"], row["status"],
        row["error"], row["outcome"], row["num"],
    )  # fmt: skip


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
