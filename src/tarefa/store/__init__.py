"""Stores: the seam (:class:`JobStore`, also known as :class:`Store`) and :func:`open_store`,
which picks a backend by URL scheme.

- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` — embedded, one process.
  Query options: ``synchronous=full`` (default: a commit survives power loss) or ``normal``
  (faster; still safe against a process crash, but the last commits may be lost on power loss).
- ``postgresql://user@host:port/db`` — shared by many processes (needs ``tarefa[postgres]``).
- ``memory://`` — in this process's memory, gone when it ends: for tests and trying things out.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from .base import (
    ChangeListener,
    Claim,
    Created,
    EventPage,
    EventQuery,
    Idempotency,
    IdempotencyMismatch,
    JobAlreadyTerminal,
    JobChange,
    JobNotTerminal,
    JobQuery,
    Listeners,
    Outcome,
    Precondition,
    ResourceBusy,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
)
from .documents import DocumentKind, Documents
from .jobstore import JobStore, Store

__all__ = [
    "ChangeListener",
    "Claim",
    "Created",
    "DocumentKind",
    "Documents",
    "EventPage",
    "EventQuery",
    "Idempotency",
    "IdempotencyMismatch",
    "InvalidStoreURL",
    "JobAlreadyTerminal",
    "JobChange",
    "JobNotTerminal",
    "JobQuery",
    "JobStore",
    "Listeners",
    "Outcome",
    "Precondition",
    "ResourceBusy",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]


class InvalidStoreURL(ValueError):
    """The store URL names no known backend or carries a bad option."""


def open_store(url: str) -> Store:
    """Build (not yet open) the store for ``url``. Backends are imported only when chosen."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    if parts.scheme == "memory":
        from .memory import MemoryStore

        if parts.netloc or parts.path.strip("/") or options:
            raise InvalidStoreURL(f"the memory store takes no path or option: use memory://, not {url!r}")
        return MemoryStore()
    if parts.scheme == "sqlite":
        from .sqlite import SQLiteStore

        path = url.split("://", 1)[1].split("?", 1)[0]
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise InvalidStoreURL("a SQLite store URL needs a file path: sqlite:///./tarefa.db")
        if path == ":memory:" or path.startswith("file:"):
            raise InvalidStoreURL(
                "a SQLite store is a file shared by a writer and a reader connection, so it cannot be "
                "':memory:': use memory:// for a store in memory, or sqlite:///path/to/file.db"
            )
        return SQLiteStore(path, **options)
    if parts.scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise InvalidStoreURL(
                f"the PostgreSQL store needs the 'postgres' extra: pip install 'tarefa[postgres]' ({exc})"
            ) from None
        return PostgresStore(url.split("?", 1)[0], **options)
    raise InvalidStoreURL(
        f"unknown store URL {url!r}: use sqlite:///path/to/file.db, postgresql://user@host/db or memory://"
    )
