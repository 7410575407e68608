"""Group commit for the PostgreSQL store: the writes of many coroutines in one transaction.

Every write of :class:`~tarefa.store.postgres.PostgresStore` is a call queued to a
:class:`GroupCommit`. Its writer task (or tasks: the store's ``writers`` option) takes every call
waiting in the queue (up to :data:`MAX_BATCH`) and runs them in **one** transaction, which
announces every change of the batch with ``NOTIFY`` (payloads split as
:func:`~tarefa.store.postgres_listen.encode_changes` does) and commits; then the listeners hear
those changes, once, and only then each caller gets its answer: a call returns after its own change
is durable.

Why: one transaction per job change made every job cost several transactions, each with its round
trips (``BEGIN``, ``NOTIFY``, ``COMMIT``), its WAL flush, and a notification that wakes every
listening process; and a transaction that notifies holds a database-wide lock on the notification
queue across its commit's WAL flush, so such transactions commit strictly one after the other. A
batch shares all of that among its calls. ``BEGIN`` and ``COMMIT`` travel with other statements
(the pool's connections are in autocommit mode), so a lone call costs no more round trips than
before.

*Solo.* A write may come with a second form of itself, its *solo*: one statement that does the
same work and sends its own notification (:mod:`~tarefa.store.postgres_sql`'s ``*_ANNOUNCED``
statements). A call alone in its batch runs its solo on the autocommit connection, which commits it
durably with no ``BEGIN`` or ``COMMIT`` of its own: one round trip instead of three, when writes are
few and far between (one caller waiting for each job). It runs so only on a connection with nothing
to read: a connection the server closed while it sat in the pool has (the server's farewell), and
then the call runs as a transaction as usual, whose ``BEGIN`` finds the broken connection before
anything is done (see :class:`StaleConnection`). A solo whose connection breaks under it may
have committed or not: it runs once more on another connection, so each solo must find out by
itself that it already ran (an insert meets its own row, an end finds the job ended as it would
have ended it).

One failing call must neither fail nor undo the others. A batch first runs its calls one after the
other without savepoints (the common case: none fails). If one fails, the transaction is rolled
back and the batch runs again with a savepoint around each call, so the failing call is undone
alone. A write may therefore run more than once: it must depend only on the database (its last run
is the one that counts), and the changes it reports are kept only if it succeeds.

Batches of different processes (or of two writers of one process) may lock the same rows in
different orders, and a writer waiting for a lock holds up every write queued behind it. A batch
therefore waits at most ``LOCK_TIMEOUT`` (see :mod:`~tarefa.store.postgres_sql`) for a lock; a call
that waits longer, or is chosen to break a deadlock, is left out of its batch and run alone, in a
transaction of its own, beside the writers: alone, it waits for its locks as long as needed, as
every write did before group commit, without holding up the other writes. ``SKIP LOCKED`` claims
never wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import errors, sql
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from . import postgres_sql as q
from .base import JobChange, StoreError, StoreUnavailable

logger = logging.getLogger("tarefa.store.postgres")

T = TypeVar("T")

#: Most calls in one transaction. Each call is a subtransaction; PostgreSQL keeps the ids of 64 of
#: them per transaction in shared memory, and more make every other snapshot slower.
MAX_BATCH = 64
#: How many times a call is run alone after losing a lock conflict, before it fails.
RETRIES = 3

Connection = psycopg.AsyncConnection[Any]
Cursor = psycopg.AsyncCursor[DictRow]
#: One write: runs its statements on the cursor, appends the job changes it made, returns its value.
Write = Callable[[Cursor, list[JobChange]], Awaitable[T]]
Encode = Callable[[Sequence[JobChange]], list[str]]
Emit = Callable[[Sequence[JobChange]], None]

_LOCK_CONFLICTS = (errors.LockNotAvailable, errors.DeadlockDetected, errors.SerializationFailure)


class StaleConnection(Exception):
    """The pool's connection was found broken before anything was done on it (say, the server
    restarted while it sat idle): the same work may go again on another connection."""


def store_error(exc: psycopg.Error) -> StoreError:
    """The store's own exception for a driver exception (module doc of :mod:`tarefa.store.base`)."""
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailable(f"PostgreSQL is unavailable: {exc}")
    return StoreError(f"PostgreSQL failed: {exc}")


class _Call(Generic[T]):
    __slots__ = ("attempts", "future", "queued_at", "solo", "write")

    def __init__(self, write: Write[T], future: asyncio.Future[T], solo: Write[T] | None = None) -> None:
        self.write = write
        self.solo = solo
        self.future = future
        self.attempts = 0
        self.queued_at = future.get_loop().time()


class _Stop:
    """Queued by :meth:`GroupCommit.stop`: one per writer, after every call already queued."""


_STOP = _Stop()


class GroupCommit:
    """The writer task(s) of one store, committing the queued calls in batches (module doc)."""

    def __init__(
        self,
        pool: Callable[[], AsyncConnectionPool[Connection]],
        encode: Encode,
        emit: Emit,
        *,
        writers: int,
        pool_timeout: float,
    ) -> None:
        self._pool = pool
        self._pool_timeout = pool_timeout
        self._encode = encode
        self._emit = emit
        self._writers = writers
        self._queue: asyncio.Queue[_Call[Any] | _Stop] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._alone: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._serve(self._queue), name=f"tarefa-postgres-writer-{n}")
            for n in range(self._writers)
        ]

    async def stop(self) -> None:
        """Commit the calls already queued, then end the writers; later calls are refused."""
        queue, self._queue = self._queue, None
        if queue is None:
            return
        for _ in self._tasks:
            queue.put_nowait(_STOP)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._alone:  # calls waiting for a lock: they get as long as a call waits for a connection
            _, late = await asyncio.wait(set(self._alone), timeout=self._pool_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        while not queue.empty():  # only if a writer died: never leave a caller waiting
            item = queue.get_nowait()
            if isinstance(item, _Call):
                _settle(item, StoreError("the PostgreSQL store was closed before this change was written"))

    async def write(self, write: Write[T], solo: Write[T] | None = None) -> T:
        """Run ``write`` in the next batch; returns its value once the batch has committed. With a
        ``solo`` (module doc), that runs instead if the call is alone in its batch."""
        if self._queue is None:
            raise StoreError("the PostgreSQL store is not open: call 'await store.open()' first")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Call(write, future, solo))
        return await future  # a cancelled caller cancels the future: its call is skipped if not begun

    # -- writers ---------------------------------------------------------------------------------

    async def _serve(self, queue: asyncio.Queue[_Call[Any] | _Stop]) -> None:
        stopping = False
        while not stopping:
            calls: list[_Call[Any]] = []
            item = await queue.get()
            while True:
                if isinstance(item, _Stop):
                    stopping = True  # each writer takes exactly one stop: the others find theirs
                    break
                calls.append(item)
                if len(calls) >= MAX_BATCH or queue.empty():
                    break
                item = queue.get_nowait()
            calls = [call for call in calls if not call.future.done()]  # cancelled callers: skipped
            try:
                for call in await self._transaction(calls) if calls else []:
                    self._start_alone(call)
            except Exception:  # a bug: answer the callers, keep writing
                logger.exception("the PostgreSQL writer failed")
                for call in calls:
                    _settle(call, StoreError("the PostgreSQL store failed to write; the server log has the details"))

    def _start_alone(self, call: _Call[Any]) -> None:
        """Run a call that lost a lock conflict in a task of its own, so that the writer does not
        wait for its locks."""
        task = asyncio.create_task(self._run_alone(call), name="tarefa-postgres-write-alone")
        self._alone.add(task)
        task.add_done_callback(self._alone.discard)

    async def _run_alone(self, call: _Call[Any]) -> None:
        try:
            for _ in range(RETRIES):
                call.queued_at = call.future.get_loop().time()
                if not await self._transaction([call], patient=True):
                    return
            _settle(call, StoreError("PostgreSQL kept choosing this change to break deadlocks; try again"))
        except Exception:
            logger.exception("the PostgreSQL writer failed")
            _settle(call, StoreError("the PostgreSQL store failed to write; the server log has the details"))
        finally:  # cancelled by stop(): the change may not have happened
            _settle(call, StoreError("the PostgreSQL store was closed while this change waited for a lock"))

    async def _transaction(self, calls: list[_Call[Any]], *, patient: bool = False) -> list[_Call[Any]]:
        """One transaction; answers the calls it settles and returns those to run again alone.
        Only a patient transaction (a call alone, beside the writers) waits for locks unbounded."""
        # No call waits longer than the pool's timeout for a connection, counting its time in the queue.
        deadline = min(call.queued_at for call in calls) + self._pool_timeout
        for attempt in range(2):
            batch = _Batch(calls)
            try:
                async with self._connection(deadline) as conn, conn.cursor(row_factory=dict_row) as cursor:
                    await self._run(conn, cursor, batch, patient)
            except StaleConnection as exc:
                if attempt == 0:
                    await replace_broken_connections(self._pool())
                    continue
                batch.fail(StoreUnavailable(f"PostgreSQL is unavailable: {exc.__cause__}"))
                return []
            except psycopg.Error as exc:
                batch.fail(store_error(exc))
                return []
            self._emit(batch.changes)
            batch.answer()
            return batch.retry
        raise AssertionError("unreachable")

    async def _run(self, conn: Connection, cursor: Cursor, batch: _Batch, patient: bool) -> None:
        if batch.alone and not patient and batch.calls[0].solo is not None and _quiet(conn):
            await batch.run(conn, cursor, careful=False, solo=True)  # committed as it ran
            return
        await first_statement(conn, cursor, q.BEGIN if patient else q.BEGIN_WITH_LOCK_TIMEOUT)
        if batch.alone:  # no savepoint needed: if the call fails, so does the transaction
            succeeded = await batch.run(conn, cursor, careful=False)
            await cursor.execute(self._commit_query(batch, patient) if succeeded else q.ROLLBACK)
            return
        if not await batch.run(conn, cursor, careful=False):
            await cursor.execute(q.BEGIN_CAREFUL)
            batch.restart()
            await batch.run(conn, cursor, careful=True)
        await cursor.execute(self._commit_query(batch, patient))

    def _commit_query(self, batch: _Batch, patient: bool) -> sql.Composed:
        """Announce the batch's changes and commit, in one round trip."""
        payloads = self._encode(batch.changes) if batch.changes else []
        return q.announce_and_commit(payloads, lift_lock_timeout=not patient)

    @contextlib.asynccontextmanager
    async def _connection(self, deadline: float) -> AsyncIterator[Connection]:
        """A pool connection (in autocommit mode: the batch sends its own BEGIN and COMMIT, each
        together with other statements, to save round trips)."""
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        async with self._pool().connection(timeout) as conn:
            try:
                yield conn
            finally:
                if not conn.closed and conn.info.transaction_status is not TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute(q.ROLLBACK)


class _Batch:
    """The calls of one transaction and what became of each."""

    def __init__(self, calls: list[_Call[Any]]) -> None:
        self.calls = calls
        self.every_call = list(calls)
        self.alone = len(calls) == 1
        self.changes: list[JobChange] = []
        self.retry: list[_Call[Any]] = []  # lock conflicts: to run again alone
        self._outcomes: list[tuple[_Call[Any], bool, Any]] = []

    async def run(self, conn: Connection, cursor: Cursor, *, careful: bool, solo: bool = False) -> bool:
        """Run the calls in order. Careful: each in a savepoint, undone alone if it fails; not
        careful: stop at the first call that fails and return False (the transaction is spoilt).
        Solo: the call's solo form, alone, outside any transaction."""
        last = len(self.calls) - 1
        for number, call in enumerate(self.calls):
            failed = await self._run_call(conn, cursor, call, solo)
            if failed and not careful:
                return False
            if careful and (failed or number < last):
                await cursor.execute(q.UNDO_CALL if failed else q.NEXT_CALL)
        return True

    def restart(self) -> None:
        """Forget a run that was rolled back; the lock losers stay out of the next one."""
        self.calls = [call for call in self.calls if call not in self.retry]
        self.changes = []
        self._outcomes = []

    async def _run_call(self, conn: Connection, cursor: Cursor, call: _Call[Any], solo: bool = False) -> bool:
        """Run one call; True if it failed (its work must be undone)."""
        made: list[JobChange] = []
        write = call.solo if solo and call.solo is not None else call.write
        try:
            value = await write(cursor, made)
        except psycopg.Error as exc:
            if conn.broken and solo:  # it may or may not have run: once more (module doc)
                raise StaleConnection(str(exc)) from exc
            if conn.broken:
                raise
            if isinstance(exc, _LOCK_CONFLICTS):
                self.retry.append(call)
            else:
                self._outcomes.append((call, False, store_error(exc)))
            return True
        except Exception as exc:
            self._outcomes.append((call, False, exc))
            return True
        self.changes.extend(made)
        self._outcomes.append((call, True, value))
        return False

    def answer(self) -> None:
        """After the commit: every call gets its value or its own exception."""
        for call, ok, value in self._outcomes:
            if ok:
                _settle(call, None, value)
            else:
                _settle(call, value)

    def fail(self, error: StoreError) -> None:
        """The transaction failed: every call gets ``error``, but those that failed on their own."""
        own = {id(call): value for call, ok, value in self._outcomes if not ok}
        for call in self.every_call:
            _settle(call, own.get(id(call), error))


async def first_statement(conn: Connection, cursor: Cursor, statement: str) -> None:
    """Run the first statement on a connection from the pool; :class:`StaleConnection` if the
    connection turns out to be broken."""
    try:
        await cursor.execute(statement)
    except psycopg.OperationalError as exc:
        if conn.broken:
            raise StaleConnection(str(exc)) from exc
        raise


def _quiet(conn: Connection) -> bool:
    """True if the server has sent nothing on this idle connection. A connection the server
    closed (a restart, ``pg_terminate_backend``) has its farewell or its end to read."""
    try:
        poller = select.poll()  # not select.select: it fails on descriptors above 1023
        poller.register(conn.pgconn.socket, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError, psycopg.OperationalError):
        return False


async def replace_broken_connections(pool: AsyncConnectionPool[Connection]) -> None:
    """Check every idle connection of the pool, replacing the broken ones (after a server restart)."""
    logger.info("found a broken PostgreSQL connection; checking the others")
    with contextlib.suppress(psycopg.Error):
        await pool.check()


def _settle(call: _Call[Any], error: BaseException | None, value: Any = None) -> None:
    if call.future.done():  # its caller was cancelled
        return
    if error is not None:
        call.future.set_exception(error)
    else:
        call.future.set_result(value)
