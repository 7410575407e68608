"""A PostgreSQL database of a test's own (``TAREFA_TEST_POSTGRES``), dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

POSTGRES_URL = os.environ.get("TAREFA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is unreachable at {POSTGRES_URL} (set TAREFA_TEST_POSTGRES): {exc}")


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty database (tarefa migrates it at start)."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(POSTGRES_URL)._replace(path=f"/{name}", query="").geturl() + "?pool_size=4"
    finally:
        with _admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
