"""PostgreSQL databases for the tests: each test, module or session that needs one gets one of its own.

``TAREFA_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``) names the server; an
unreachable server fails the tests that need it, it never skips them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

POSTGRES_URL = os.environ.get("TAREFA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def database_url(name: str) -> str:
    """``TAREFA_TEST_POSTGRES`` with another database name."""
    return urlsplit(POSTGRES_URL)._replace(path=f"/{name}", query="").geturl()


def admin_connection(url: str = POSTGRES_URL) -> psycopg.Connection[Any]:
    """An autocommit connection for set-up; fails the test if the server is unreachable."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is unreachable at {url} (set TAREFA_TEST_POSTGRES): {exc}")


@contextlib.contextmanager
def temporary_database() -> Iterator[str]:
    """An empty database of its own; dropped (with its connections) afterwards."""
    name = f"tarefa_test_{secrets.token_hex(6)}"
    with admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(name)
    finally:
        with admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
