"""Server commands: ``tarefa serve`` (the API, with workers in the process)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..serving import is_loopback, load_app, run, tarefa_of

StoreOption = Annotated[
    Optional[str],  # noqa: UP045 - typer reads the annotation at run time
    typer.Option("--store", envvar="TAREFA_STORE", help="Store URL [default: sqlite:///./tarefa.db]"),
]


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback only for now)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    store: StoreOption = None,
    workers: Annotated[int, typer.Option(min=0, help="Jobs run at once in this process (0: API only)")] = 4,
    step_delay: Annotated[
        float, typer.Option(min=0.0, help="Reference service: seconds per simulated step (0: instant)")
    ] = 1.0,
    grace: Annotated[
        float, typer.Option(min=0.0, help="On SIGTERM, seconds running jobs get to finish before release")
    ] = 30.0,
    app: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--app", help="Serve your own application instead: module:attribute"),
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Serve the job API: the reference service, or your application with --app."""
    if not is_loopback(host):
        _fail(f"refusing to listen on {host}: authentication is not available yet, so tarefa serves loopback only")
    if app is None:
        from ..service import create_app

        application = create_app(store=store, workers=workers, step_delay=step_delay)
        tarefa = tarefa_of(application)
    else:
        try:
            application = load_app(app)
        except (ValueError, ImportError) as exc:
            _fail(str(exc))
        tarefa = tarefa_of(application)
    assert tarefa is not None  # create_app and load_app make sure of it
    tarefa.configure(store=store, workers=workers, grace_seconds=grace)
    run(application, host=host, port=port, access_log=access_log, log_level=log_level.lower())


def _fail(message: str) -> None:
    typer.echo(f"tarefa: {message}", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add the server commands to ``app``."""
    app.command("serve")(serve)
