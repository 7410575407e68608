"""Server commands: ``tarefa serve`` (the API), ``tarefa worker`` (jobs only), ``tarefa db``."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated, NoReturn, Optional

import typer
from fastapi import FastAPI

from ..http.mount import Tarefa
from ..serving import LOG_FORMAT, load_app, run, tarefa_of
from ..store import StoreError, open_store
from .access import (
    MaxQueuedOption,
    MaxWaitingOption,
    TlsCertOption,
    TlsKeyOption,
    UsersOption,
    check_exposure,
    identity_of,
    load_users,
    tls_files,
)

# Options that tune the job layer are None unless given: an --app keeps its own settings then.
GraceOption = Annotated[
    Optional[float],  # noqa: UP045 - typer reads the annotation at run time
    typer.Option(
        "--grace", min=0.0, help="On SIGTERM, seconds running jobs get to finish before release [default: 30]"
    ),
]
LeaseOption = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--lease", min=1.0, help="Lease of a running job, renewed every third of it [default: 30]"),
]
StoreOption = Annotated[
    Optional[str],  # noqa: UP045 - typer reads the annotation at run time
    typer.Option("--store", envvar="TAREFA_STORE", help="Store URL [default: sqlite:///./tarefa.db]"),
]


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (beyond loopback: needs --users)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    store: StoreOption = None,
    workers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=0, help="Jobs run at once in this process (0: API only) [default: 4]"),
    ] = None,
    step_delay: Annotated[
        float, typer.Option(min=0.0, help="Reference service: seconds per simulated step (0: instant)")
    ] = 1.0,
    grace: GraceOption = None,
    lease: LeaseOption = None,
    app: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--app", help="Serve your own application instead: module:attribute"),
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    users: UsersOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    max_waiting_per_user: MaxWaitingOption = None,
    max_queued_jobs: MaxQueuedOption = None,
) -> None:
    """Serve the job API: the reference service, or your application with --app."""
    tls = tls_files(tls_cert, tls_key)
    checker = load_users(users)
    check_exposure(host, checker, tls)
    application, tarefa = _load_tarefa(app, step_delay)
    tarefa.configure(store=store, workers=workers, grace_seconds=grace, lease_seconds=lease)
    tarefa.configure_access(
        identity=identity_of(checker), max_waiting_per_user=max_waiting_per_user, max_queued_jobs=max_queued_jobs
    )
    _check_store(tarefa)
    run(application, host=host, port=port, access_log=access_log, log_level=log_level.lower(),
        ssl_certfile=tls.certfile, ssl_keyfile=tls.keyfile)  # fmt: skip


def worker(
    store: StoreOption = None,
    concurrency: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="Jobs run at once by this process [default: 4]"),
    ] = None,
    app: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--app", help="Run your application's operations: module:attribute"),
    ] = None,
    step_delay: Annotated[
        float, typer.Option(min=0.0, help="Reference service: seconds per simulated step (0: instant)")
    ] = 1.0,
    grace: GraceOption = None,
    lease: LeaseOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    users: UsersOption = None,
) -> None:
    """Run jobs without serving HTTP (several machines share one PostgreSQL store)."""
    load_users(users)  # checked now: the worker's HTTP surface (metrics) signs in with it
    _, tarefa = _load_tarefa(app, step_delay)
    tarefa.configure(store=store, workers=concurrency, grace_seconds=grace, lease_seconds=lease)
    _check_store(tarefa)
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    try:
        asyncio.run(_work_until_signal(tarefa))
    except StoreError as exc:
        _fail(str(exc))


def _load_tarefa(app: str | None, step_delay: float) -> tuple[FastAPI, Tarefa]:
    """The application (reference service unless ``app`` names one) and its Tarefa."""
    if app is None:
        from ..service import create_app

        application = create_app(step_delay=step_delay)
    else:
        try:
            application = load_app(app)
        except (ValueError, ImportError) as exc:
            _fail(str(exc))
    tarefa = tarefa_of(application)
    assert tarefa is not None  # create_app and load_app make sure of it
    return application, tarefa


def _check_store(tarefa: Tarefa) -> None:
    """Open and close the store once, so that a bad URL or a locked file is one clear line."""

    async def check() -> None:
        store = tarefa.build_store()
        await store.open()
        await store.close()

    try:
        asyncio.run(check())
    except (StoreError, ValueError, OSError) as exc:
        _fail(f"cannot use the store: {exc}")


async def _work_until_signal(tarefa: Tarefa) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with tarefa.running():
        logging.getLogger("tarefa").info("worker started: %d job(s) at once", tarefa.workers)
        await stop.wait()
        logging.getLogger("tarefa").info("stopping: running jobs get %.0f s to finish", tarefa.grace_seconds)


db = typer.Typer(help="Database schema commands.", no_args_is_help=True)


@db.command("upgrade")
def upgrade(store: StoreOption = None) -> None:
    """Apply the schema migrations this tarefa knows (start-up applies them too)."""
    target = open_store(store or "sqlite:///./tarefa.db")

    async def apply() -> int:
        try:
            return await target.upgrade()
        finally:
            await target.close()

    try:
        version = asyncio.run(apply())
    except StoreError as exc:
        _fail(str(exc))
    typer.echo(f"schema is at version {version}")


def _fail(message: str) -> NoReturn:
    typer.echo(f"tarefa: {message}", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add the server commands to ``app``."""
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.add_typer(db, name="db")
