"""Integration fixtures: every store backend on real storage (a SQLite file, a PostgreSQL database).

PostgreSQL: ``TAREFA_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``) names a
server and a database to connect to; the tests create their own database ``tarefa_test_<random>``
there and drop it at the end. An unreachable server fails these tests, it never skips them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

from databases import admin_connection, temporary_database
from tarefa.model import Job
from tarefa.store import JobChange, Store, open_store

TAREFA_TABLES = (
    "tarefa_jobs", "tarefa_deleted_jobs", "tarefa_resources", "tarefa_job_events", "tarefa_callback_outbox",
    "tarefa_callback_attempts",
)  # fmt: skip


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """One database for the whole session; :func:`postgres_url` empties it before each test."""
    with temporary_database() as url:
        yield url


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A database of its own for this test (no schema yet), dropped afterwards."""
    with temporary_database() as url:
        yield url


@pytest.fixture
def postgres_admin() -> Callable[[str], psycopg.Connection[Any]]:
    """``postgres_admin(url)``: an autocommit connection for set-up and inspection."""
    return admin_connection


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The session database, emptied (the schema stays)."""
    with admin_connection(postgres_database) as conn:
        exists = "SELECT to_regclass(%s) IS NOT NULL"
        present = [table for table in TAREFA_TABLES if conn.execute(exists, (table,)).fetchone() == (True,)]
        for table in present:  # DELETE: much faster than TRUNCATE on tables this small
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
    return postgres_database


# -- any store ----------------------------------------------------------------------------------------


def _url_of(kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/t.db"
    url: str = request.getfixturevalue("postgres_url")
    return f"{url}?pool_size=4"


POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The URL of an empty store of each backend."""
    return _url_of(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", POSTGRES])
def durable_store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The URL of an empty store of each durable backend (the memory store keeps nothing)."""
    return _url_of(request.param, request, tmp_path)


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    store = open_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(store_url: str, anyio_backend: str) -> AsyncIterator[Store]:
    """An open store of each backend, closed after the test."""
    async with opened(store_url) as store:
        yield store


@pytest.fixture
async def durable_store(durable_store_url: str, anyio_backend: str) -> AsyncIterator[Store]:
    """An open store of each durable backend, closed after the test."""
    async with opened(durable_store_url) as store:
        yield store


# -- listening ------------------------------------------------------------------------------------------


class Recorder:
    """A store listener that keeps what it hears, checks the thread, and waits for changes."""

    def __init__(self) -> None:
        self.batches: list[list[JobChange]] = []
        self.foreign_threads: list[int] = []
        self.loop_thread = threading.get_ident()

    def __call__(self, changes: Sequence[JobChange]) -> None:
        if threading.get_ident() != self.loop_thread:
            self.foreign_threads.append(threading.get_ident())
        self.batches.append(list(changes))

    @property
    def changes(self) -> list[JobChange]:
        return [change for batch in self.batches for change in batch]

    def of(self, job_id: str) -> list[Job | None]:
        """Every state of one job heard so far, in order (None: deleted)."""
        return [change.job for change in self.changes if change.job_id == job_id]

    def heard(self, job_id: str, predicate: Callable[[Job | None], bool] = lambda _: True) -> bool:
        return any(predicate(job) for job in self.of(job_id))

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"the listener did not hear {what or 'the change'} within {timeout} s")
            await anyio.sleep(0.005)


@pytest.fixture
def listen() -> Callable[[Store], Recorder]:
    """``listen(store)`` registers and returns a new :class:`Recorder`."""

    def register(store: Store) -> Recorder:
        recorder = Recorder()
        store.add_listener(recorder)
        return recorder

    return register
