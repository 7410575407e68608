"""Choosing a store by URL, and the errors for URLs that name none."""

from __future__ import annotations

import sys

import pytest

from tarefa.store import InvalidStoreURL, open_store
from tarefa.store.sqlite import SQLiteStore


def test_sqlite_urls(tmp_path: object) -> None:
    store = open_store("sqlite:///./x.db?synchronous=normal")
    assert isinstance(store, SQLiteStore) and str(store.path) == "x.db" and store.synchronous == "NORMAL"
    assert str(open_store("sqlite:////tmp/abs.db").path) == "/tmp/abs.db"  # type: ignore[attr-defined]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "mysql://localhost/db", "tarefa.db"])
def test_urls_that_name_no_store(url: str) -> None:
    with pytest.raises(InvalidStoreURL):
        open_store(url)


def test_a_bad_sqlite_option_is_refused() -> None:
    with pytest.raises(ValueError, match="synchronous"):
        open_store("sqlite:///x.db?synchronous=off")


def test_postgresql_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith(("psycopg", "tarefa.store.postgres"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(InvalidStoreURL, match=r"pip install 'tarefa\[postgres\]'"):
        open_store("postgresql://postgres@127.0.0.1/test")
