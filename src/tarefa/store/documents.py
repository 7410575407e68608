"""Documents: small JSON records an application keeps beside its jobs, in the same store.

Not part of the job rules: a job store offers them (``store.documents``) so that an application
built on tarefa — like the reference service's hosts and clusters — needs no database of its own.
Applications reach them through :meth:`tarefa.Tarefa.documents`, not through the store.
"""

from __future__ import annotations

from typing import Any, Protocol


class Documents(Protocol):
    """Documents by ``kind`` and ``key``; every method is one committed write or one read."""

    async def put_document(self, kind: str, key: str, data: dict[str, Any], *, only_if_absent: bool = False) -> bool:
        """Store a document; with ``only_if_absent``, False (and no change) if the key exists."""

    async def get_document(self, kind: str, key: str) -> dict[str, Any] | None:
        """The document, or None."""

    async def list_documents(self, kind: str) -> list[dict[str, Any]]:
        """Every document of ``kind``, in key order (byte order)."""

    async def delete_document(self, kind: str, key: str) -> bool:
        """Delete a document; False if it did not exist."""


class DocumentKind:
    """The documents of one kind, as an application uses them (``await hosts.get("esx-01")``)."""

    def __init__(self, documents: Documents, kind: str) -> None:
        self._documents = documents
        self.kind = kind

    async def put(self, key: str, data: dict[str, Any], *, only_if_absent: bool = False) -> bool:
        """Store ``data`` under ``key``; with ``only_if_absent``, False (no change) if it exists."""
        return await self._documents.put_document(self.kind, key, data, only_if_absent=only_if_absent)

    async def get(self, key: str) -> dict[str, Any] | None:
        return await self._documents.get_document(self.kind, key)

    async def list(self) -> list[dict[str, Any]]:
        """Every document of this kind, in key order."""
        return await self._documents.list_documents(self.kind)

    async def delete(self, key: str) -> bool:
        return await self._documents.delete_document(self.kind, key)
