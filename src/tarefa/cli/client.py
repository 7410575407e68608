"""Client commands: ``tarefa call``, ``tarefa jobs list|show|wait|watch|cancel|delete``, ``tarefa events``.

A thin layer over :class:`tarefa.client.Client`. Exit codes: 0 success, 1 the job failed,
2 usage or HTTP error (including an unreachable server), 3 timeout while waiting. Expected
failures print one line on stderr, never a traceback. The options every command shares are in
:mod:`tarefa.cli.common`.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TextIO

import orjson
import typer

from ..client import Client, ClientError, Job, JobEvent, JobState, RetryNotice, WaitTimeout
from ..client.answers import job_in_answer
from ..client.core import REPLAYABLE_METHODS
from .common import EXIT_ERROR, EXIT_JOB_FAILED, EXIT_TIMEOUT, Common, Output, default, fail, with_common_options

if TYPE_CHECKING:
    from rich.console import Console

PollOption = Annotated[int, typer.Option("--poll-timeout", min=1, max=120, help="Seconds per long poll")]
JsonLinesOption = Annotated[bool, typer.Option("--json", help="One JSON object per event (as -o json)")]
AfterOption = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--after", min=0, help="Start after this event seq (resume where you stopped)"),
]
JobIdArgument = Annotated[str, typer.Argument(help="The job's id")]
MAX_PAGE = 1000


# -- commands -----------------------------------------------------------------------------------


def call(
    method: Annotated[str, typer.Argument(help="HTTP method: GET, POST, PATCH, DELETE ...")],
    path: Annotated[str, typer.Argument(help="Path of the call, e.g. /api/hosts")],
    json_text: Annotated[
        Optional[str],  # noqa: UP045 - typer reads the annotation at run time
        typer.Option("--json", help='Request body as JSON text, e.g. \'{"name": "h1"}\''),
    ] = None,
    data: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--data", help="Request body from a JSON file: @FILE (@- for stdin)"),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="If the answer is a job, follow it to its end")] = False,
    poll_timeout: PollOption = 120,
    *,
    common: Common,
) -> None:
    """Call the API; an asynchronous call prints its job (and follows it with --wait)."""
    body = _request_body(json_text, data)
    with _expected_failures(), _connect(common) as connection:
        client = connection[0]
        method = method.upper()
        keyed = method not in REPLAYABLE_METHODS
        response = client.request(method, path, json=body, idempotency_key=keyed, timeout=common.timeout)
        job = job_in_answer(response)
        if job is None:
            _print_body(response.content)
        elif wait and not job.is_terminal:
            _finish(_follow(connection, job, common, poll_timeout), common.output)
        else:
            _finish(job, common.output, exit_on_failure=wait)


def jobs_list(
    state: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--state", help="queued, running, success, failure, or several: queued|running"),
    ] = None,
    operation: Annotated[Optional[str], typer.Option("--operation", help="e.g. host.register")] = None,  # noqa: UP045
    limit: Annotated[
        int,
        typer.Option("--limit", "-n", min=0, help=f"At most this many jobs, 0: all {default(50)}", show_default=False),
    ] = 50,
    *,
    common: Common,
) -> None:
    """List jobs, newest first."""
    with _expected_failures(), _connect(common) as connection:
        client = connection[0]
        page_size = MAX_PAGE if limit == 0 else min(limit + 1, MAX_PAGE)
        listing = client.list(
            state=state, operation=operation, max_records=page_size, order_by="create_time desc", timeout=common.timeout
        )
        found = list(listing if limit == 0 else itertools.islice(listing, limit + 1))
        more = limit != 0 and len(found) > limit
        found = found[:limit] if limit else found
        if common.output is Output.JSON:
            _print_json([dict(job.raw) for job in found])
        elif not found:
            typer.echo(f"no jobs match{_filters(state, operation)}", err=True)
        else:
            _print_table(found)
        if more:
            typer.echo(f"tarefa: showing the newest {limit} jobs; --limit 0 shows all", err=True)


def jobs_show(job_id: JobIdArgument, *, common: Common) -> None:
    """Show one job as it is now."""
    with _expected_failures(), _connect(common) as connection:
        client = connection[0]
        _finish(client.get(job_id, timeout=common.timeout), common.output, exit_on_failure=False)


def jobs_wait(job_id: JobIdArgument, poll_timeout: PollOption = 120, *, common: Common) -> None:
    """Follow a job with long polls until it ends: exit 0 on success, 1 on failure, 3 on timeout."""
    with _expected_failures(), _connect(common) as connection:
        _finish(_follow(connection, job_id, common, poll_timeout), common.output)


def jobs_watch(
    job_id: JobIdArgument,
    json_lines: JsonLinesOption = False,
    after: AfterOption = None,
    poll_timeout: PollOption = 120,
    *,
    common: Common,
) -> None:
    """Print a job's events as they happen, one line each, until it ends: exit 0 on success,
    1 on failure, 3 on timeout. Uses the server's event stream, or long polls without one."""
    as_json = json_lines or common.output is Output.JSON
    with _expected_failures(), _connect(common) as connection:
        client, notices = connection
        notices.following = True
        last: JobEvent | None = None
        for event in client.watch(job_id, after=after, timeout=common.timeout, poll_timeout=poll_timeout):
            _print_event(event, as_json, with_job=False)
            last = event
    if last is not None and last.state is JobState.FAILURE:
        raise typer.Exit(EXIT_JOB_FAILED)


def events(
    state: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--state", help="Only events in this state: queued, running, success, failure, or a|b"),
    ] = None,
    operation: Annotated[Optional[str], typer.Option("--operation", help="e.g. host.register")] = None,  # noqa: UP045
    json_lines: JsonLinesOption = False,
    after: AfterOption = None,
    count: Annotated[
        int, typer.Option("--count", "-n", min=0, help=f"Stop after this many events, 0: never {default(0)}")
    ] = 0,
    *,
    common: Common,
) -> None:
    """Print the events of every job you may see, live, one line each (stops after --count events, or Ctrl-C)."""
    as_json = json_lines or common.output is Output.JSON
    with _expected_failures(), _connect(common) as connection:
        client, notices = connection
        notices.following = True
        stream = client.events(state=state, operation=operation, after=after)
        for event in stream if count == 0 else itertools.islice(stream, count):
            _print_event(event, as_json, with_job=True)


def jobs_cancel(job_id: JobIdArgument, *, common: Common) -> None:
    """Cancel a job: a queued job fails at once, a running one is asked to stop."""
    with _expected_failures(), _connect(common) as connection:
        client = connection[0]
        _finish(client.cancel(job_id, timeout=common.timeout), common.output, exit_on_failure=False)


def jobs_delete(job_id: JobIdArgument, *, common: Common) -> None:
    """Delete a terminal job."""
    with _expected_failures(), _connect(common) as connection:
        client = connection[0]
        client.delete(job_id, timeout=common.timeout)
        if common.output is Output.JSON:
            _print_json({"id": job_id, "deleted": True})
        else:
            typer.echo(f"deleted job {job_id}")


def register(app: typer.Typer) -> None:
    """Add the client commands to ``app``."""
    app.command("call")(with_common_options(call))
    jobs = typer.Typer(help="Follow and manage jobs.", no_args_is_help=True)
    jobs.command("list")(with_common_options(jobs_list))
    jobs.command("show")(with_common_options(jobs_show))
    jobs.command("wait")(with_common_options(jobs_wait))
    jobs.command("watch")(with_common_options(jobs_watch))
    jobs.command("cancel")(with_common_options(jobs_cancel))
    jobs.command("delete")(with_common_options(jobs_delete))
    app.add_typer(jobs, name="jobs")
    app.command("events")(with_common_options(events))


# -- behaviour shared by the commands -----------------------------------------------------------


@contextmanager
def _expected_failures() -> Iterator[None]:
    """Every failure the client expects becomes one line on stderr and its exit code."""
    try:
        yield
    except WaitTimeout as exc:
        fail(str(exc), EXIT_TIMEOUT)
    except (ClientError, ValueError) as exc:
        fail(str(exc), EXIT_ERROR)


class _Notices:
    """Tells the person at once, on stderr, when the client retries and why; while a live
    progress bar runs, the bar says "reconnecting" instead."""

    def __init__(self, retry_for: float) -> None:
        self.retry_for = retry_for
        self.bar: _LiveBar | None = None
        self.following = False

    def __call__(self, notice: RetryNotice) -> None:
        if self.bar is not None:
            self.bar.reconnecting(notice)
        elif notice.attempt == 1:
            patience = "until the job can be followed again" if self.following else f"for up to {self.retry_for:g} s"
            typer.echo(f"tarefa: {notice.method} {notice.url}: {notice.reason}; retrying {patience}", err=True)


@contextmanager
def _connect(common: Common) -> Iterator[tuple[Client, _Notices]]:
    notices = _Notices(common.retry_for)
    with common.client(on_retry=notices) as client:
        yield client, notices


def _filters(state: str | None, operation: str | None) -> str:
    given = [f"{name}={value}" for name, value in (("state", state), ("operation", operation)) if value]
    return f" ({', '.join(given)})" if given else ""


def _request_body(json_text: str | None, data: str | None) -> Any:
    if json_text is not None and data is not None:
        fail("give --json or --data, not both")
    if data is not None:
        json_text, source = _read_data(data), f"--data {data}"
    else:
        source = "--json"
    if json_text is None:
        return None
    try:
        return orjson.loads(json_text)
    except orjson.JSONDecodeError as exc:
        fail(f"{source} is not valid JSON: {exc}")


def _read_data(data: str) -> str:
    if not data.startswith("@"):
        fail("--data takes @FILE (or @- for stdin); give JSON text with --json")
    if data == "@-":
        return sys.stdin.read()
    try:
        return Path(data[1:]).read_text()
    except OSError as exc:
        fail(f"cannot read {data[1:]}: {exc.strerror}")


def _follow(connection: tuple[Client, _Notices], job: Job | str, common: Common, poll_timeout: int) -> Job:
    client, notices = connection
    notices.following = True
    with _display(common.output, notices) as on_change:
        return client.wait(job, timeout=common.timeout, poll_timeout=poll_timeout, on_change=on_change)


def _finish(job: Job, output: Output, *, exit_on_failure: bool = True) -> None:
    if output is Output.JSON:
        _print_json(dict(job.raw))
    else:
        _print_job(job)
    if exit_on_failure and job.state is JobState.FAILURE:
        raise typer.Exit(EXIT_JOB_FAILED)


# -- display ------------------------------------------------------------------------------------


@contextmanager
def _display(output: Output, notices: _Notices) -> Iterator[Callable[[Job], None]]:
    """A change callback: a live progress bar on a terminal (stderr), else one line per change
    (on stdout for text output, on stderr for JSON output so that stdout stays one document)."""
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal:
        with _LiveBar(console) as bar:
            notices.bar = bar
            try:
                yield bar.update
            finally:
                notices.bar = None
    else:
        stream = sys.stderr if output is Output.JSON else sys.stdout
        yield lambda job: _print_change(job, stream)


class _LiveBar:
    """A rich progress bar whose description is the job's state and message."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[pct]}"))
        self.progress = Progress(*columns, TimeElapsedColumn(), console=console, transient=True)
        self.task: Any = None
        self.last: Job | None = None

    def __enter__(self) -> _LiveBar:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def update(self, job: Job) -> None:
        self.last = job
        percent = "" if job.progress is None else f"{job.progress:3d}%"
        self._show(f"{job.state.value}: {job.message}", job.progress, percent)

    def reconnecting(self, notice: RetryNotice) -> None:
        """During an outage: say so, and why, instead of spinning on the last message."""
        progress = self.last.progress if self.last else None
        self._show(f"reconnecting: {notice.reason}", progress, "")

    def _show(self, description: str, progress: int | None, percent: str) -> None:
        if self.task is None:
            self.task = self.progress.add_task(description, total=100, pct=percent)
        total = None if progress is None else 100
        self.progress.update(self.task, description=description, completed=progress or 0, total=total, pct=percent)


def _print_change(job: Job, stream: TextIO) -> None:
    percent = "   -" if job.progress is None else f"{job.progress:3d}%"
    stream.write(f"{job.last_modified_text or '-'}  {job.state.value:<8} {percent}  {job.message}\n")
    stream.flush()


def _print_event(event: JobEvent, as_json: bool, *, with_job: bool) -> None:
    """One line: the event's JSON (as the server sent it; made from the job without streams), or
    ``time  #seq  [job]  state  progress  message``."""
    if as_json:
        fields = dict(event.raw) or {
            "seq": None, "job_id": event.job_id, "time": event.time_text, "state": event.state.value,
            "message": event.message, "progress": event.progress,
            **({"error": {"code": event.error.code, "message": event.error.message}} if event.error else {}),
        }  # fmt: skip
        typer.echo(orjson.dumps(fields).decode())
        return
    percent = "   -" if event.progress is None else f"{event.progress:3d}%"
    seq = "-" if event.seq is None else f"#{event.seq}"
    job = f"  {event.job_id}" if with_job else ""
    error = f" ({event.error.code}: {event.error.message})" if event.error else ""
    typer.echo(f"{event.time_text or '-'}  {seq:>7}{job}  {event.state.value:<8} {percent}  {event.message}{error}")


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
