"""Client commands of the CLI (call, jobs ...): see issue 3."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the client commands to ``app``."""
