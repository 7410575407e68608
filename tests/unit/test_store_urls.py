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


def test_memory_urls() -> None:
    from tarefa.store.memory import MemoryStore

    assert isinstance(open_store("memory://"), MemoryStore)
    assert open_store("memory://") is not open_store("memory://")  # each URL opens a store of its own
    for url in ("memory://x", "memory:///path", "memory://?a=1"):
        with pytest.raises(InvalidStoreURL, match="memory://"):
            open_store(url)


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://:memory:", "sqlite:///file::memory:?cache=shared"])
def test_sqlite_in_memory_is_refused_with_the_way_out(
    url: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    with pytest.raises(InvalidStoreURL, match="use memory://"):
        open_store(url)
    import os

    assert os.listdir(".") == []  # and no lock file named ':memory:'
