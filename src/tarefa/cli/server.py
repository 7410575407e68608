"""Server commands: ``tarefa serve`` (the API), ``tarefa worker`` (jobs only), ``tarefa db``."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer

from ..logs import LOG_FORMATS, configure_logging, log_startup
from .callbacks import (
    CallbackAllowOption,
    CallbackBackoffOption,
    CallbackRetryForOption,
    WebhookSecretOption,
    configure_callbacks,
)
from .common import default

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..http.mount import Tarefa
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
        "--grace", min=0.0, help=f"On SIGTERM, seconds running jobs get to finish before release {default(30)}"
    ),
]
LeaseOption = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--lease", min=1.0, help=f"Lease of a running job, renewed every third of it {default(30)}"),
]
LogFormatOption = Annotated[
    str, typer.Option("--log-format", help=f"Log lines as {' or '.join(LOG_FORMATS)} (one format for every line)")
]
StoreOption = Annotated[
    Optional[str],  # noqa: UP045 - typer reads the annotation at run time
    typer.Option(
        "--store", envvar="TAREFA_STORE", show_envvar=True, help=f"Store URL {default('sqlite:///./tarefa.db')}"
    ),
]


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (beyond loopback: needs --users)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    store: StoreOption = None,
    workers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=0, help=f"Jobs run at once in this process (0: API only) {default(4)}"),
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
    log_format: LogFormatOption = "text",
    users: UsersOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    max_waiting_per_user: MaxWaitingOption = None,
    max_queued_jobs: MaxQueuedOption = None,
    max_body: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--max-body", min=0, envvar="TAREFA_MAX_BODY", help=f"Largest request body, in bytes {default(1048576)}"
        ),
    ] = None,
    header_timeout: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            min=0.001, envvar="TAREFA_HEADER_TIMEOUT", help=f"Seconds to receive a request's headers {default(10)}"
        ),
    ] = None,
    body_timeout: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            min=0.001, envvar="TAREFA_BODY_TIMEOUT", help=f"Seconds between two parts of a body {default(30)}"
        ),
    ] = None,
    webhook_secret: WebhookSecretOption = None,
    callback_allow: CallbackAllowOption = None,
    callback_retry_for: CallbackRetryForOption = None,
    callback_backoff: CallbackBackoffOption = None,
    proxy_headers: Annotated[
        bool, typer.Option(help="Behind a proxy on loopback: take client addresses from X-Forwarded-For")
    ] = False,
) -> None:
    """Serve the job API: the reference service, or your application with --app."""
    from ..serving import ServerLimits, run

    tls = tls_files(tls_cert, tls_key)
    checker = load_users(users)
    check_exposure(host, checker, tls)
    _check_port(host, port)
    application, tarefa = _load_tarefa(app, step_delay)
    tarefa.configure(store=store, workers=workers, grace_seconds=grace, lease_seconds=lease)
    _configure_callbacks(tarefa, webhook_secret, callback_allow, callback_retry_for, callback_backoff)
    tarefa.configure_access(
        identity=identity_of(checker), max_waiting_per_user=max_waiting_per_user, max_queued_jobs=max_queued_jobs
    )
    _check_store(tarefa)
    _configure_logging(log_format, log_level)
    log_startup(
        store=tarefa.store_url,
        workers=tarefa.workers,
        base_url=f"{'https' if tls.certfile else 'http'}://{host}:{port}",
        api=tarefa.jobs_href.removesuffix("/jobs"),
    )
    limits = ServerLimits.from_env()
    limits = ServerLimits(
        max_body=limits.max_body if max_body is None else max_body,
        header_timeout=limits.header_timeout if header_timeout is None else header_timeout,
        body_timeout=limits.body_timeout if body_timeout is None else body_timeout,
    )
    run(application, host=host, port=port, access_log=access_log, log_level=log_level.lower(),
        log_format=log_format, limits=limits, ssl_certfile=tls.certfile, ssl_keyfile=tls.keyfile,
        proxy_headers=proxy_headers)  # fmt: skip


def _check_port(host: str, port: int) -> None:
    """Bind the port once before start-up, so that a busy port is one clear line, not a failure
    reported after "Application startup complete" (uvicorn binds with SO_REUSEADDR too)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            _fail(f"port {port} on {host} is in use (another tarefa serve?): stop it, or choose another --port")
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def worker(
    store: StoreOption = None,
    concurrency: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help=f"Jobs run at once by this process {default(4)}"),
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
    log_format: LogFormatOption = "text",
    metrics_port: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--metrics-port", min=1, max=65535, help="Serve GET /metrics on this loopback port"),
    ] = None,
    users: UsersOption = None,
    webhook_secret: WebhookSecretOption = None,
    callback_allow: CallbackAllowOption = None,
    callback_retry_for: CallbackRetryForOption = None,
    callback_backoff: CallbackBackoffOption = None,
) -> None:
    """Run jobs without serving HTTP (several machines share one PostgreSQL store)."""
    from ..serving import run_on_fastest_loop
    from ..store import StoreError

    load_users(users)  # checked now: the worker's HTTP surface (metrics) signs in with it
    _, tarefa = _load_tarefa(app, step_delay)
    tarefa.configure(store=store, workers=concurrency, grace_seconds=grace, lease_seconds=lease)
    _configure_callbacks(tarefa, webhook_secret, callback_allow, callback_retry_for, callback_backoff)
    _check_store(tarefa)
    _configure_logging(log_format, log_level)
    try:
        run_on_fastest_loop(_work_until_signal(tarefa, metrics_port))
    except StoreError as exc:
        _fail(str(exc))


def _load_tarefa(app: str | None, step_delay: float) -> tuple[FastAPI, Tarefa]:
    """The application (reference service unless ``app`` names one) and its Tarefa.

    The current directory is put first on ``sys.path``, as uvicorn does, so that
    ``--app myservice:app`` finds ``myservice.py`` in the folder the command runs from.
    """
    from ..serving import load_app, tarefa_of

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if app is None:
        from ..service import create_app

        try:
            application = create_app(step_delay=step_delay)
        except ValueError as exc:  # a TAREFA_* setting the engine reads (e.g. TAREFA_WEBHOOK_SECRET)
            _fail(str(exc))
    else:
        try:
            application = load_app(app)
        except (ValueError, ImportError) as exc:
            _fail(str(exc))
    tarefa = tarefa_of(application)
    assert tarefa is not None  # create_app and load_app make sure of it
    return application, tarefa


def _configure_callbacks(tarefa: Tarefa, *options: Any) -> None:
    try:
        configure_callbacks(tarefa, *options)
    except ValueError as exc:
        _fail(f"callbacks: {exc}")


def _check_store(tarefa: Tarefa) -> None:
    """Open and close the store once, so that a bad URL or a locked file is one clear line."""
    from ..store import StoreError

    async def check() -> None:
        store = tarefa.build_store()
        await store.open()
        await store.close()

    try:
        asyncio.run(check())
    except (StoreError, ValueError, OSError) as exc:
        _fail(f"cannot use the store: {exc}")


def _configure_logging(log_format: str, log_level: str) -> None:
    try:
        configure_logging(log_format, log_level)
    except ValueError as exc:
        _fail(f"--log-format/--log-level: {exc}")


async def _work_until_signal(tarefa: Tarefa, metrics_port: int | None = None) -> None:
    from ..metrics import serve_metrics

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with tarefa.running():
        log_startup(store=tarefa.store_url, workers=tarefa.workers, base_url=None)
        server = None if metrics_port is None else await serve_metrics(tarefa.metrics, "127.0.0.1", metrics_port)
        if server is not None:
            logging.getLogger("tarefa").info("metrics at http://127.0.0.1:%d/metrics", metrics_port)
        await stop.wait()
        if server is not None:
            server.close()
        logging.getLogger("tarefa").info("stopping: running jobs get %.0f s to finish", tarefa.grace_seconds)


db = typer.Typer(help="Database schema commands.", no_args_is_help=True)


@db.command("upgrade")
def upgrade(store: StoreOption = None) -> None:
    """Apply the schema migrations this tarefa knows (start-up applies them too)."""
    from ..store import StoreError, open_store

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
