"""The reference service (SPEC §9), built only on tarefa's public API: see :mod:`.app`."""

from .app import create_app

__all__ = ["create_app"]
