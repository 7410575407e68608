"""A SQLite connection owned by one thread, fed by the event loop.

The event loop never blocks on SQLite: coroutines hand a function to the thread and await a
future. The writer thread takes every function waiting in its queue and runs them in **one**
transaction (group commit): under load, one fsync makes many jobs durable at once. Each
failing call is undone alone (without a savepoint per call unless one fails after writing: see
:func:`_transaction`), so it does not undo the others.
Results and the committed changes go back to the loop in a single callback per batch.

The WAL is copied back into the database file (a checkpoint: page writes and an fsync of the
database file) by a :class:`Checkpointer` on a connection and thread of its own, which the writer
asks for every :data:`CHECKPOINT_COMMITS` commits: a commit no longer waits while SQLite copies
the pages and syncs the database file inside it. Checkpoints a few hundred pages apart copy each
page changed many times in between once (measured: fewer, larger checkpoints cost less per job
than one every few commits, alone or under load). SQLite's own checkpoint on the
writer's commit stays, as the bound of the WAL: it copies only the frames the checkpointer has
not, which lets the WAL start over while calls come too close together for the checkpointer to
finish between two of them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from .base import JobChange, StoreError, StoreUnavailable

log = logging.getLogger("tarefa.store.sqlite")

T = TypeVar("T")
MAX_BATCH = 512
#: Commits after which the writer asks the checkpointer for a checkpoint (a commit alone writes
#: some ten pages of the WAL; busy batches write more, and reach the store's own bound first).
CHECKPOINT_COMMITS = 16

#: A function run on the connection's thread: returns its value and the changes it made.
Work = Callable[[sqlite3.Connection], tuple[T, Sequence[JobChange]]]


class _Call(Generic[T]):
    __slots__ = ("future", "work")

    def __init__(self, work: Work[T], future: asyncio.Future[T]) -> None:
        self.work = work
        self.future = future


_STOP = object()


class ConnectionThread(threading.Thread):
    """One connection, one thread. ``transactional`` threads group their calls into one commit."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        loop: asyncio.AbstractEventLoop,
        deliver_changes: Callable[[Sequence[JobChange]], None],
        *,
        transactional: bool,
        name: str,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._connect = connect
        self._checkpointer = checkpointer
        self._uncheckpointed = 0  # commits since the last checkpoint asked for
        self._loop = loop
        self._deliver_changes = deliver_changes
        self._transactional = transactional
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ready: asyncio.Future[None] = loop.create_future()

    async def started(self) -> None:
        """Start the thread and wait until its connection is open (or raise why it is not)."""
        self.start()
        await self._ready

    def call(self, work: Work[T]) -> asyncio.Future[T]:
        """Run ``work`` on the thread; the future resolves after its commit."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Call(work, future))
        return future

    async def stop(self) -> None:
        """Finish the calls already queued, close the connection, end the thread."""
        self._queue.put(_STOP)
        await asyncio.to_thread(self.join)

    def run(self) -> None:
        try:
            conn = self._connect()
        except Exception as exc:  # reported to the opener
            self._loop.call_soon_threadsafe(_set_exception, self._ready, _as_store_error(exc))
            return
        self._loop.call_soon_threadsafe(_set_result, self._ready, None)
        try:
            while self._serve_batch(conn):
                pass
        finally:
            conn.close()

    def _serve_batch(self, conn: sqlite3.Connection) -> bool:
        batch = [self._queue.get()]
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        keep_going = _STOP not in batch
        calls: list[_Call[Any]] = [item for item in batch if item is not _STOP]
        if calls:
            outcomes, changes = self._execute(conn, calls)
            self._loop.call_soon_threadsafe(self._finish, calls, outcomes, changes)
            if self._checkpointer is not None:
                self._uncheckpointed += 1
                if self._uncheckpointed >= CHECKPOINT_COMMITS:
                    self._uncheckpointed = 0
                    self._checkpointer.request()
        return keep_going

    def _execute(
        self, conn: sqlite3.Connection, calls: list[_Call[Any]]
    ) -> tuple[list[tuple[bool, Any]], list[JobChange]]:
        if not self._transactional:
            changes: list[JobChange] = []
            return [_run(conn, item.work, changes) for item in calls], changes
        try:
            return _transaction(conn, calls)
        except sqlite3.Error as exc:
            _rollback(conn)
            if len(calls) == 1:
                log.error("SQLite commit failed: %s", exc)
                return [(False, _as_store_error(exc))], []
        # A batch that cannot commit (a nearly full disk) is written call by call: what fits, lands.
        log.warning("SQLite could not commit a batch of %d writes; writing them one by one", len(calls))
        outcomes: list[tuple[bool, Any]] = []
        changes = []
        for item in calls:
            try:
                alone, made = _transaction(conn, [item])
            except sqlite3.Error as exc:
                _rollback(conn)
                log.error("SQLite commit failed: %s", exc)
                alone, made = [(False, _as_store_error(exc))], []
            outcomes += alone
            changes += made
        return outcomes, changes

    def _finish(self, calls: list[_Call[Any]], outcomes: list[tuple[bool, Any]], changes: list[JobChange]) -> None:
        try:
            if changes:
                self._deliver_changes(changes)
        finally:  # whatever a listener does, every caller gets its answer
            for item, (ok, value) in zip(calls, outcomes, strict=True):
                if ok:
                    _set_result(item.future, value)
                else:
                    _set_exception(item.future, value)


class Checkpointer(threading.Thread):
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection when asked (module doc).

    A passive checkpoint never blocks the writer nor the readers: it copies the frames it can,
    and once every frame is copied the writer's next transaction starts the WAL over (cut back
    to the store's ``journal_size_limit``). It waits for a request (nothing runs while idle);
    requests made while a checkpoint runs make one more checkpoint, not one each."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._connect = connect
        self._due = threading.Event()
        self._stopping = False
        #: Checkpoints run so far, and the last one's (busy, WAL frames, frames copied).
        self.checkpoints = 0
        self.last: tuple[int, int, int] | None = None

    def request(self) -> None:
        """Ask for a checkpoint (soon, on this thread); returns at once."""
        self._due.set()

    async def stop(self) -> None:
        """End the thread (a checkpoint under way finishes first) and close its connection."""
        self._stopping = True
        self._due.set()
        await asyncio.to_thread(self.join)

    def run(self) -> None:
        try:
            conn = self._connect()
        except Exception as exc:  # SQLite's own checkpoints on the writer's commits remain
            log.error("cannot open the SQLite checkpoint connection: %s", exc)
            return
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._stopping:
                    return
                try:
                    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.last = (int(row[0]), int(row[1]), int(row[2]))
                except sqlite3.Error as exc:  # a full disk, say: the next request tries again
                    log.warning("SQLite checkpoint failed: %s", exc)
                self.checkpoints += 1
        finally:
            conn.close()


def _transaction(conn: sqlite3.Connection, calls: list[_Call[Any]]) -> tuple[list[tuple[bool, Any]], list[JobChange]]:
    """The calls in one transaction; raises :class:`sqlite3.Error` if the transaction itself fails.

    A failing call is undone alone. The calls first run one after another with nothing between
    them: a call that fails before it writes (a busy resource, a missing job) leaves nothing to
    undo. Only if one fails after writing is the transaction rolled back and the batch run again
    with a savepoint per call (:func:`_savepoint_transaction`). A savepoint costs two statements,
    each a hand-off of the interpreter lock between the writer and the event loop: running
    without them takes two statements per call off a busy server."""
    outcomes: list[tuple[bool, Any]] = []
    changes: list[JobChange] = []
    conn.execute("BEGIN IMMEDIATE")
    if len(calls) == 1:  # alone in its transaction: a failure rolls it all back
        outcome = _run(conn, calls[0].work, changes)
        conn.execute("COMMIT" if outcome[0] else "ROLLBACK")
        return [outcome], changes
    for item in calls:
        written = conn.total_changes
        outcome = _run(conn, item.work, changes)
        if not outcome[0] and (conn.total_changes != written or not conn.in_transaction):
            _rollback(conn)  # it wrote, or SQLite ended the transaction: undo all, call by call
            return _savepoint_transaction(conn, calls)
        outcomes.append(outcome)
    conn.execute("COMMIT")
    return outcomes, changes


def _savepoint_transaction(
    conn: sqlite3.Connection, calls: list[_Call[Any]]
) -> tuple[list[tuple[bool, Any]], list[JobChange]]:
    """The calls in one transaction, each in a savepoint of its own (a failing call is undone
    alone); raises :class:`sqlite3.Error` if the transaction itself fails."""
    outcomes: list[tuple[bool, Any]] = []
    changes: list[JobChange] = []
    conn.execute("BEGIN IMMEDIATE")
    for item in calls:
        conn.execute("SAVEPOINT call")
        outcome = _run(conn, item.work, changes)
        conn.execute("RELEASE call" if outcome[0] else "ROLLBACK TO call")
        if not outcome[0]:
            conn.execute("RELEASE call")
        outcomes.append(outcome)
    conn.execute("COMMIT")
    return outcomes, changes


def _run(conn: sqlite3.Connection, work: Work[Any], changes: list[JobChange]) -> tuple[bool, Any]:
    try:
        value, made = work(conn)
    except Exception as exc:
        return False, _as_store_error(exc)
    if made:
        changes.extend(made)
    return True, value


#: Primary result codes that mean "not now": the disk is full or failing; retrying later may work.
_TRANSIENT = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


def _as_store_error(exc: Exception) -> Exception:
    """The store's own error for a driver error (a full disk is :class:`StoreUnavailable`)."""
    if not isinstance(exc, sqlite3.Error):
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _TRANSIENT:
        return StoreUnavailable(f"the SQLite store cannot write now ({exc}); free disk space, then try again")
    return StoreError(f"SQLite error: {exc}")


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
