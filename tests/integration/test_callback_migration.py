"""Schema version 3 (callbacks) migrates a version-2 database with jobs in it, on both stores; version 4
(PostgreSQL: ``answer_by``) a version-3 one."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tarefa.model import JobState
from tarefa.store import open_store, sqlite_sql
from tarefa.store import postgres_sql as pg

pytestmark = pytest.mark.anyio

OLD_JOB = ("old-job", "thing.make", "success", "Done", 100, "alice")


async def check_upgraded(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        await store.check_ready()
        job = await store.get_job("old-job")
        assert job is not None and job.state is JobState.SUCCESS and job.callback is None
        assert await store.list_callback_attempts("old-job") == []
        assert await store.claim_callbacks("w", limit=10, lease_seconds=30, recover=True) == []
    finally:
        await store.close()


async def test_a_version_2_sqlite_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for script in sqlite_sql.MIGRATIONS[:2]:
        conn.executescript(script)
    conn.execute(
        "INSERT INTO jobs (id, operation, state, message, progress, create_time, last_modified, owner) "
        "VALUES (?, ?, ?, ?, ?, 1, 2, ?)",
        OLD_JOB,
    )
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    await check_upgraded(f"sqlite:///{path}")
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (len(sqlite_sql.MIGRATIONS),) == (3,)


_OLD_ROW = (
    "INSERT INTO tarefa_jobs (id, operation, state, message, progress, create_time, last_modified, owner{}) "
    "VALUES (%s, %s, %s, %s, %s, now(), now(), %s{})"
)


def _at_version(conn: psycopg.Connection[Any], version: int, *, extra: tuple[str, str] = ("", "")) -> None:
    """A PostgreSQL database at schema ``version`` with :data:`OLD_JOB` in it (``extra`` columns and values)."""
    conn.execute(pg.CREATE_VERSION_TABLE)
    for script in pg.MIGRATIONS[:version]:
        conn.execute(script)
    conn.execute(pg.INSERT_VERSION, {"version": version})
    conn.execute(_OLD_ROW.format(*extra), OLD_JOB)


@pytest.mark.postgres
async def test_a_version_2_postgresql_database_is_migrated(
    fresh_postgres_url: str, postgres_admin: Callable[[str], psycopg.Connection[Any]]
) -> None:
    with postgres_admin(fresh_postgres_url) as conn:
        _at_version(conn, 2)
    await check_upgraded(fresh_postgres_url)
    with postgres_admin(fresh_postgres_url) as conn:
        assert conn.execute("SELECT version FROM tarefa_schema_version").fetchall() == [(len(pg.MIGRATIONS),)]


@pytest.mark.postgres
async def test_a_version_3_postgresql_database_gets_answer_by(
    fresh_postgres_url: str, postgres_admin: Callable[[str], psycopg.Connection[Any]]
) -> None:
    """Version 4: the column ``answer_by`` (an end records the held 200 by itself), empty on old
    jobs, whose first answers keep their status."""
    with postgres_admin(fresh_postgres_url) as conn:
        _at_version(conn, 3, extra=(", idempotency_key, request_hash, answer_status", ", 'k', 'h', 200"))
    await check_upgraded(fresh_postgres_url)
    with postgres_admin(fresh_postgres_url) as conn:
        assert conn.execute("SELECT version FROM tarefa_schema_version").fetchall() == [(4,)] == [(len(pg.MIGRATIONS),)]
        assert conn.execute("SELECT answer_by, answer_status FROM tarefa_jobs").fetchall() == [(None, 200)]
