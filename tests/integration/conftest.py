"""Integration fixtures: every store backend on real storage (a SQLite file, a PostgreSQL database).

PostgreSQL: ``TAREFA_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``) names a
server and a database to connect to; the tests create their own database ``tarefa_test_<random>``
there and drop it at the end. An unreachable server fails these tests, it never skips them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
import psycopg
import pytest
from psycopg import sql

from tarefa.model import Job
from tarefa.store import JobChange, Store, open_store

POSTGRES_URL = os.environ.get("TAREFA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
TAREFA_TABLES = ("tarefa_jobs", "tarefa_deleted_jobs", "tarefa_resources")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- PostgreSQL databases ---------------------------------------------------------------------------


def database_url(name: str) -> str:
    """``TAREFA_TEST_POSTGRES`` with another database name."""
    return urlsplit(POSTGRES_URL)._replace(path=f"/{name}", query="").geturl()


def admin_connection(url: str = POSTGRES_URL) -> psycopg.Connection[Any]:
    """An autocommit connection for test set-up; fails the test if the server is unreachable."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is unreachable at {url} (set TAREFA_TEST_POSTGRES): {exc}")


@contextlib.contextmanager
def temporary_database() -> Iterator[str]:
    """Create an empty database, yield its URL, drop it (and its connections) afterwards."""
    name = f"tarefa_test_{secrets.token_hex(6)}"
    with admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(name)
    finally:
        with admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


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
