"""Stores: the seam (:class:`Store`) and :func:`open_store`, which picks a backend by URL scheme.

- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` — embedded, one process.
  Query options: ``synchronous=full`` (default: a commit survives power loss) or ``normal``
  (faster; still safe against a process crash, but the last commits may be lost on power loss).
- ``postgresql://user@host:port/db`` — shared by many processes (needs ``tarefa[postgres]``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from .base import (
    ChangeListener,
    Created,
    Idempotency,
    IdempotencyMismatch,
    JobAlreadyTerminal,
    JobChange,
    JobNotTerminal,
    JobQuery,
    Outcome,
    ResourceBusy,
    SchemaTooNew,
    Store,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "ChangeListener",
    "Created",
    "Idempotency",
    "IdempotencyMismatch",
    "InvalidStoreURL",
    "JobAlreadyTerminal",
    "JobChange",
    "JobNotTerminal",
    "JobQuery",
    "Outcome",
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
    if parts.scheme == "sqlite":
        from .sqlite import SQLiteStore

        path = url.split("://", 1)[1].split("?", 1)[0]
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise InvalidStoreURL("a SQLite store URL needs a file path: sqlite:///./tarefa.db")
        return SQLiteStore(path, **options)
    if parts.scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise InvalidStoreURL(
                f"the PostgreSQL store needs the 'postgres' extra: pip install 'tarefa[postgres]' ({exc})"
            ) from None
        return PostgresStore(url.split("?", 1)[0], **options)
    raise InvalidStoreURL(f"unknown store URL {url!r}: use sqlite:///path/to/file.db or postgresql://user@host/db")
