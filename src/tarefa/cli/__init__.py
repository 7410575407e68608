"""The ``tarefa`` command line: server commands (serve, worker, db) and client commands
(call, jobs ...). Each submodule adds its commands to :data:`app` through ``register``."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="tarefa",
    help="tarefa: asynchronous jobs for HTTP APIs (serve them, run them, call them).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """tarefa: asynchronous jobs for HTTP APIs (serve them, run them, call them)."""


def _register_all() -> None:
    from . import client, server, users

    server.register(app)
    client.register(app)
    users.register(app)


def main() -> None:
    """Entry point of the ``tarefa`` script."""
    _register_all()
    app()
