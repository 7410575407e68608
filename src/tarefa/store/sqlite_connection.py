"""A SQLite connection owned by one thread, fed by the event loop.

The event loop never blocks on SQLite: coroutines hand a function to the thread and await a
future. The writer thread takes every function waiting in its queue and runs them in **one**
transaction (group commit): under load, one fsync makes many jobs durable at once. Each
function runs inside its own savepoint, so one failing call does not undo the others.
Results and the committed changes go back to the loop in a single callback per batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from .base import JobChange, StoreError

log = logging.getLogger("tarefa.store.sqlite")

T = TypeVar("T")
MAX_BATCH = 512

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
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._connect = connect
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
        return keep_going

    def _execute(
        self, conn: sqlite3.Connection, calls: list[_Call[Any]]
    ) -> tuple[list[tuple[bool, Any]], list[JobChange]]:
        outcomes: list[tuple[bool, Any]] = []
        changes: list[JobChange] = []
        if not self._transactional:
            for item in calls:
                outcomes.append(_run(conn, item.work, changes))
            return outcomes, changes
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in calls:
                conn.execute("SAVEPOINT call")
                outcome = _run(conn, item.work, changes)
                conn.execute("RELEASE call" if outcome[0] else "ROLLBACK TO call")
                if not outcome[0]:
                    conn.execute("RELEASE call")
                outcomes.append(outcome)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("SQLite commit failed: %s", exc)
            _rollback(conn)
            error = StoreError(f"the SQLite store could not commit: {exc}")
            return [(False, error)] * len(calls), []
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


def _run(conn: sqlite3.Connection, work: Work[Any], changes: list[JobChange]) -> tuple[bool, Any]:
    try:
        value, made = work(conn)
    except Exception as exc:
        return False, _as_store_error(exc)
    changes.extend(made)
    return True, value


def _as_store_error(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"SQLite error: {exc}")
    return exc


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
