"""Client commands: ``tarefa call`` and ``tarefa jobs list|show|wait|cancel|delete``.

A thin layer over :class:`tarefa.client.Client`. Exit codes: 0 success, 1 the job failed,
2 usage or HTTP error (including an unreachable server), 3 timeout while waiting. Expected
failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional, TextIO

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from ..client import Client, ClientError, Job, JobState, WaitTimeout
from ..client.core import REPLAYABLE_METHODS, job_in_answer

EXIT_OK, EXIT_JOB_FAILED, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3


class Output(StrEnum):
    TEXT = "text"
    JSON = "json"


UrlOption = Annotated[str, typer.Option("--url", envvar="TAREFA_URL", help="Base URL of the API", show_envvar=True)]
UserOption = Annotated[
    Optional[str],  # noqa: UP045 - typer reads the annotation at run time
    typer.Option("--user", envvar="TAREFA_USER", help="User for HTTP Basic authentication"),
]
PasswordOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--password", envvar="TAREFA_PASSWORD", help="Password for HTTP Basic authentication"),
]
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="text for people, json for programs")]
TimeoutOption = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--timeout", min=0.0, help="Give up after this many seconds (exit 3 when waiting)"),
]
CaCertOption = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--ca-cert", exists=True, dir_okay=False, help="PEM file of the CA that signed the server's cert"),
]
InsecureOption = Annotated[bool, typer.Option("--insecure", "-k", help="Do not verify the server's TLS certificate")]
RetryForOption = Annotated[
    float, typer.Option("--retry-for", min=0.0, help="Keep retrying an unreachable or busy server this long (s)")
]
PollOption = Annotated[int, typer.Option("--poll-timeout", min=1, max=120, help="Seconds per long poll")]
JobIdArgument = Annotated[str, typer.Argument(help="The job's id")]


@dataclass(frozen=True, slots=True)
class Connection:
    """The common options of every client command."""

    url: str
    user: str | None
    password: str | None
    ca_cert: Path | None
    insecure: bool
    retry_for: float

    def client(self) -> Client:
        verify: bool | str = False if self.insecure else str(self.ca_cert) if self.ca_cert else True
        auth = (self.user, self.password or "") if self.user else None
        try:
            return Client(self.url, auth=auth, verify=verify, retry_for=self.retry_for)
        except (ValueError, OSError) as exc:
            _fail(f"cannot use --url {self.url!r} / --ca-cert: {exc}", EXIT_ERROR)


# -- commands -----------------------------------------------------------------------------------


def call(
    method: Annotated[str, typer.Argument(help="HTTP method: GET, POST, PATCH, DELETE ...")],
    path: Annotated[str, typer.Argument(help="Path of the call, e.g. /api/hosts")],
    json_text: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--json", help='Request body as JSON text, e.g. \'{"name": "h1"}\''),
    ] = None,
    data: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--data", help="Request body from a JSON file: @FILE (@- for stdin)"),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="If the answer is a job, follow it to its end")] = False,
    poll_timeout: PollOption = 120,
    url: UrlOption = "http://127.0.0.1:8080",
    user: UserOption = None,
    password: PasswordOption = None,
    output: OutputOption = Output.TEXT,
    timeout: TimeoutOption = None,
    ca_cert: CaCertOption = None,
    insecure: InsecureOption = False,
    retry_for: RetryForOption = 10.0,
) -> None:
    """Call the API; an asynchronous call prints its job (and follows it with --wait)."""
    body = _request_body(json_text, data)
    connection = Connection(url, user, password, ca_cert, insecure, retry_for)
    with _expected_failures(), connection.client() as client:
        method = method.upper()
        keyed = method not in REPLAYABLE_METHODS
        response = client.request(method, path, json=body, idempotency_key=keyed, timeout=timeout)
        job = job_in_answer(response)
        if job is None:
            _print_body(response.content)
        elif wait and not job.is_terminal:
            _finish(_follow(client, job, output, timeout, poll_timeout), output)
        else:
            _finish(job, output, exit_on_failure=wait)


def jobs_list(
    state: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--state", help="queued, running, success, failure, or several: queued|running"),
    ] = None,
    operation: Annotated[Optional[str], typer.Option("--operation", help="e.g. host.register")] = None,  # noqa: UP045
    url: UrlOption = "http://127.0.0.1:8080",
    user: UserOption = None,
    password: PasswordOption = None,
    output: OutputOption = Output.TEXT,
    timeout: TimeoutOption = None,
    ca_cert: CaCertOption = None,
    insecure: InsecureOption = False,
    retry_for: RetryForOption = 10.0,
) -> None:
    """List jobs, newest first (all pages)."""
    connection = Connection(url, user, password, ca_cert, insecure, retry_for)
    with _expected_failures(), connection.client() as client:
        found = list(client.list(state=state, operation=operation, order_by="create_time desc", timeout=timeout))
        if output is Output.JSON:
            _print_json([dict(job.raw) for job in found])
        else:
            _print_table(found)


def jobs_show(
    job_id: JobIdArgument,
    url: UrlOption = "http://127.0.0.1:8080",
    user: UserOption = None,
    password: PasswordOption = None,
    output: OutputOption = Output.TEXT,
    timeout: TimeoutOption = None,
    ca_cert: CaCertOption = None,
    insecure: InsecureOption = False,
    retry_for: RetryForOption = 10.0,
) -> None:
    """Show one job as it is now."""
    connection = Connection(url, user, password, ca_cert, insecure, retry_for)
    with _expected_failures(), connection.client() as client:
        _finish(client.get(job_id, timeout=timeout), output, exit_on_failure=False)


def jobs_wait(
    job_id: JobIdArgument,
    poll_timeout: PollOption = 120,
    url: UrlOption = "http://127.0.0.1:8080",
    user: UserOption = None,
    password: PasswordOption = None,
    output: OutputOption = Output.TEXT,
    timeout: TimeoutOption = None,
    ca_cert: CaCertOption = None,
    insecure: InsecureOption = False,
    retry_for: RetryForOption = 10.0,
) -> None:
    """Follow a job with long polls until it ends: exit 0 on success, 1 on failure, 3 on timeout."""
    connection = Connection(url, user, password, ca_cert, insecure, retry_for)
    with _expected_failures(), connection.client() as client:
        _finish(_follow(client, job_id, output, timeout, poll_timeout), output)


def jobs_cancel(
    job_id: JobIdArgument,
    url: UrlOption = "http://127.0.0.1:8080",
    user: UserOption = None,
    password: PasswordOption = None,
    output: OutputOption = Output.TEXT,
    timeout: TimeoutOption = None,
    ca_cert: CaCertOption = None,
    insecure: InsecureOption = False,
    retry_for: RetryForOption = 10.0,
) -> None:
    """Cancel a job: a queued job fails at once, a running one is asked to stop."""
    connection = Connection(url, user, password, ca_cert, insecure, retry_for)
    with _expected_failures(), connection.client() as client:
        _finish(client.cancel(job_id, timeout=timeout), output, exit_on_failure=False)


def jobs_delete(
    job_id: JobIdArgument,
    url: UrlOption = "http://127.0.0.1:8080",
    user: UserOption = None,
    password: PasswordOption = None,
    output: OutputOption = Output.TEXT,
    timeout: TimeoutOption = None,
    ca_cert: CaCertOption = None,
    insecure: InsecureOption = False,
    retry_for: RetryForOption = 10.0,
) -> None:
    """Delete a terminal job."""
    connection = Connection(url, user, password, ca_cert, insecure, retry_for)
    with _expected_failures(), connection.client() as client:
        client.delete(job_id, timeout=timeout)
        if output is Output.JSON:
            _print_json({"id": job_id, "deleted": True})
        else:
            typer.echo(f"deleted job {job_id}")


def register(app: typer.Typer) -> None:
    """Add the client commands to ``app``."""
    app.command("call")(call)
    jobs = typer.Typer(help="Follow and manage jobs.", no_args_is_help=True)
    jobs.command("list")(jobs_list)
    jobs.command("show")(jobs_show)
    jobs.command("wait")(jobs_wait)
    jobs.command("cancel")(jobs_cancel)
    jobs.command("delete")(jobs_delete)
    app.add_typer(jobs, name="jobs")


# -- behaviour shared by the commands -----------------------------------------------------------


@contextmanager
def _expected_failures() -> Iterator[None]:
    """Every failure the client expects becomes one line on stderr and its exit code."""
    try:
        yield
    except WaitTimeout as exc:
        _fail(str(exc), EXIT_TIMEOUT)
    except (ClientError, ValueError) as exc:
        _fail(str(exc), EXIT_ERROR)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"tarefa: {message}", err=True)
    raise typer.Exit(code)


def _request_body(json_text: str | None, data: str | None) -> Any:
    if json_text is not None and data is not None:
        _fail("give --json or --data, not both", EXIT_ERROR)
    if data is not None:
        json_text, source = _read_data(data), f"--data {data}"
    else:
        source = "--json"
    if json_text is None:
        return None
    try:
        return orjson.loads(json_text)
    except orjson.JSONDecodeError as exc:
        _fail(f"{source} is not valid JSON: {exc}", EXIT_ERROR)


def _read_data(data: str) -> str:
    if not data.startswith("@"):
        _fail("--data takes @FILE (or @- for stdin); give JSON text with --json", EXIT_ERROR)
    if data == "@-":
        return sys.stdin.read()
    try:
        return Path(data[1:]).read_text()
    except OSError as exc:
        _fail(f"cannot read {data[1:]}: {exc.strerror}", EXIT_ERROR)


def _follow(client: Client, job: Job | str, output: Output, timeout: float | None, poll_timeout: int) -> Job:
    with _display(output) as on_change:
        return client.wait(job, timeout=timeout, poll_timeout=poll_timeout, on_change=on_change)


def _finish(job: Job, output: Output, *, exit_on_failure: bool = True) -> None:
    if output is Output.JSON:
        _print_json(dict(job.raw))
    else:
        _print_job(job)
    if exit_on_failure and job.state is JobState.FAILURE:
        raise typer.Exit(EXIT_JOB_FAILED)


# -- display ------------------------------------------------------------------------------------


@contextmanager
def _display(output: Output) -> Iterator[Any]:
    """A change callback: a live progress bar on a terminal (stderr), else one line per change
    (on stdout for text output, on stderr for JSON output so that stdout stays one document)."""
    console = Console(stderr=True)
    if console.is_terminal:
        with _LiveBar(console) as bar:
            yield bar.update
    else:
        stream = sys.stderr if output is Output.JSON else sys.stdout
        yield lambda job: _print_change(job, stream)


class _LiveBar:
    """A rich progress bar whose description is the job's state and message."""

    def __init__(self, console: Console) -> None:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[pct]}"))
        self.progress = Progress(*columns, TimeElapsedColumn(), console=console, transient=True)
        self.task: TaskID | None = None

    def __enter__(self) -> _LiveBar:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def update(self, job: Job) -> None:
        description = f"{job.state.value}: {job.message}"
        percent = "" if job.progress is None else f"{job.progress:3d}%"
        if self.task is None:
            self.task = self.progress.add_task(description, total=100, pct=percent)
        total = None if job.progress is None else 100
        self.progress.update(self.task, description=description, completed=job.progress or 0, total=total, pct=percent)


def _print_change(job: Job, stream: TextIO) -> None:
    percent = "   -" if job.progress is None else f"{job.progress:3d}%"
    stream.write(f"{job.last_modified_text or '-'}  {job.state.value:<8} {percent}  {job.message}\n")
    stream.flush()


def _print_job(job: Job) -> None:
    rows = {
        "id": job.id,
        "operation": job.operation,
        "state": job.state.value,
        "message": job.message,
        "progress": "" if job.progress is None else f"{job.progress}%",
        "created": job.raw.get("create_time"),
        "started": job.raw.get("start_time"),
        "ended": job.raw.get("end_time"),
        "resource": job.resource_href,
        "error": f"{job.error.code}: {job.error.message}" if job.error else None,
        "result": orjson.dumps(job.result).decode() if job.result is not None else None,
    }
    for name, value in rows.items():
        if value:
            typer.echo(f"{name:<10} {value}")


def _print_table(jobs: list[Job]) -> None:
    typer.echo(f"{'ID':<24} {'OPERATION':<18} {'STATE':<8} {'PROG':>4}  {'CREATED':<27}  MESSAGE")
    for job in jobs:
        percent = "" if job.progress is None else f"{job.progress}%"
        created = str(job.raw.get("create_time") or "")
        typer.echo(f"{job.id:<24} {job.operation:<18} {job.state.value:<8} {percent:>4}  {created:<27}  {job.message}")


def _print_json(value: Any) -> None:
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _print_body(content: bytes) -> None:
    if not content:
        return
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        typer.echo(content.decode(errors="replace"))
        return
    _print_json(value)
