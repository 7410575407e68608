"""The ``tarefa`` command line: server commands (serve, worker, db) and client commands
(call, jobs ...). Each submodule adds its commands to :data:`app` through ``register``.

Server machinery (FastAPI, uvicorn, the store, the engine) is imported inside the server
commands only, so that a client command starts fast and loads none of it.
"""

from __future__ import annotations

import typer

from .common import with_common_options

app = typer.Typer(
    name="tarefa",
    help="tarefa: asynchronous jobs for HTTP APIs (serve them, run them, call them).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _root() -> None:
    """tarefa: asynchronous jobs for HTTP APIs (serve them, run them, call them).

    The client options (--url, --user, --output ...) may be given before the command or after it.
    """


app.callback()(with_common_options(_root))


def _register_all() -> None:
    from . import client, server, users

    server.register(app)
    client.register(app)
    users.register(app)


def main() -> None:
    """Entry point of the ``tarefa`` script."""
    _register_all()
    app()
