"""The Job model and its state transitions: pure, no I/O.

Every change to a job goes through one of the transition functions below. Each returns a new
:class:`Job` (jobs are immutable values) whose ``last_modified`` is strictly later than the
previous one, even when the clock has not moved (see :func:`next_timestamp`).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

ONE_MICROSECOND = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class JobState(StrEnum):
    """The four states of a job. ``SUCCESS`` and ``FAILURE`` are terminal and final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCESS, JobState.FAILURE)


class InvalidTransition(Exception):
    """A transition that SPEC §1 does not allow (e.g. a terminal job changing state)."""


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job failed: a snake_case ``code`` and a human-readable ``message``."""

    code: str
    message: str


def _spec(kind: str, *, wire: str | None = "always", doc: str = "", mutable: bool = True) -> dict[str, Any]:
    """What every layer needs to know of one Job field (see :data:`FIELDS`).

    ``kind`` says how it is stored and written (text, int, bool, state, time, json, error, href);
    ``wire`` when it is sent to clients: ``always``, ``if_set`` (left out when None),
    ``on_success`` (only on a successful job), ``admin`` (only to administrators, when users are
    configured) or None (internal, never sent); ``mutable`` False
    for the fields fixed when the job is created.
    """
    return {"kind": kind, "wire": wire, "doc": doc, "mutable": mutable}


@dataclass(frozen=True, slots=True)
class Job:
    """One job, as stored. This class is the one definition of a job's fields: the store's
    columns, the wire format, the OpenAPI schema and the notification payloads are derived from
    it (:data:`FIELDS`). A new field costs this class, a migration, and the code that sets it."""

    id: str = field(metadata=_spec("text", doc="opaque, unguessable, URL-safe", mutable=False))
    operation: str = field(metadata=_spec("text", doc="the registered operation, e.g. cluster.deploy", mutable=False))
    state: JobState = field(metadata=_spec("state", doc="queued, running, success or failure"))
    message: str = field(metadata=_spec("text", doc="the latest human-readable status line"))
    progress: int | None = field(metadata=_spec("int", doc="0..100 when the operation reports it"))
    create_time: datetime = field(metadata=_spec("time", doc="RFC 3339, UTC, microseconds, Z", mutable=False))
    start_time: datetime | None = field(metadata=_spec("time", doc="when it started running"))
    end_time: datetime | None = field(metadata=_spec("time", doc="when it ended"))
    last_modified: datetime = field(metadata=_spec("time", doc="changes on every visible change; strictly increasing"))
    result: Any = field(default=None, metadata=_spec("json", wire="on_success", doc="only on success"))
    error: JobError | None = field(default=None, metadata=_spec("error", wire="if_set", doc="only on failure"))
    resource: str | None = field(
        default=None,
        metadata=_spec("href", wire="if_set", doc="the resource the job creates or changes", mutable=False),
    )
    owner: str = field(
        default="",
        metadata=_spec("text", wire="admin", doc="the user who started it (shown to administrators)", mutable=False),
    )
    # internal
    input: Any = field(default=None, metadata=_spec("json", wire=None, mutable=False))
    cancel_requested: bool = field(default=False, metadata=_spec("bool", wire=None))
    attempts: int = field(default=0, metadata=_spec("int", wire=None))
    max_attempts: int = field(default=1, metadata=_spec("int", wire=None, mutable=False))
    lease_owner: str | None = field(default=None, metadata=_spec("text", wire=None))
    lease_expires: datetime | None = field(default=None, metadata=_spec("time", wire=None))
    #: The callback subscription (SPEC §10): ``{"url": ..., "events": "all" | "terminal"}``.
    callback: Any = field(default=None, metadata=_spec("json", wire=None, mutable=False))

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """What :func:`_spec` says of one Job field."""

    name: str
    kind: str
    wire: str | None
    doc: str
    mutable: bool


#: Every Job field in order, with its kind: the list the other layers derive theirs from.
FIELDS: tuple[FieldInfo, ...] = tuple(
    FieldInfo(f.name, f.metadata["kind"], f.metadata["wire"], f.metadata["doc"], f.metadata["mutable"])
    for f in dataclasses.fields(Job)
)
#: The fields clients see, in wire order (``_links`` is added by the HTTP layer).
WIRE_FIELDS: tuple[FieldInfo, ...] = tuple(f for f in FIELDS if f.wire is not None)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One visible change of a job (SPEC §10): its state, message and progress after the change.

    ``seq`` is given by the store: unique in the store, increasing for one job. ``operation``
    and ``owner`` are kept for filtering and access; they are not sent to clients.
    """

    seq: int
    job_id: str
    time: datetime
    state: JobState
    message: str
    progress: int | None
    error: JobError | None = None
    operation: str = ""
    owner: str = ""

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal


def event_of(job: Job, seq: int = 0) -> JobEvent:
    """The event that records ``job`` as it is now (``seq`` 0 until the store numbers it)."""
    return JobEvent(
        seq, job.id, job.last_modified, job.state, job.message, job.progress, job.error, job.operation, job.owner
    )


# -- time ---------------------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


def next_timestamp(previous: datetime | None, now: datetime) -> datetime:
    """``now`` truncated to microseconds, or one microsecond after ``previous`` if not later."""
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    if previous is not None and now <= previous:
        return previous + ONE_MICROSECOND
    return now


def to_microseconds(value: datetime) -> int:
    """Microseconds since the Unix epoch (exact integer arithmetic)."""
    return (value - EPOCH) // ONE_MICROSECOND


def from_microseconds(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z`` suffix, as on the wire."""
    utc = value if value.tzinfo is UTC else value.astimezone(UTC)
    return utc.isoformat(timespec="microseconds")[:-6] + "Z"  # strip "+00:00" (3.5x faster than strftime)


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:?\d{2})$", re.ASCII
)


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp of any sub-second precision, with ``Z`` or an offset.

    Digits beyond microseconds are truncated (a client echoing a nanosecond clock loses nothing
    it could compare against). Digits are ASCII only; an offset is within ±23:59; the instant is
    within the years 1..9999 in UTC. Raises :class:`ValueError` with a readable reason.
    """
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text[:60]!r} is not an RFC 3339 timestamp such as 2026-11-28T14:00:00.123456Z")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    if zone in ("Z", "z"):
        offset = timedelta(0)
    else:
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        if int(digits[:2]) > 23 or int(digits[2:]) > 59:
            raise ValueError(f"{text[:60]!r}: a UTC offset is at most ±23:59")
        offset = sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    try:
        naive = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros)
        return (naive - offset).replace(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{text[:60]!r} is not a valid date and time: {exc}") from None


# -- creation and transitions -------------------------------------------------------------------


class _RandomPool:
    """Bytes from ``os.urandom``, drawn 4 KiB at a time: one system call per 256 job ids instead
    of one per id (a call costs ~100 µs on some virtual machines). Emptied in a forked child, so
    that two processes never hand out the same bytes."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._pool = b""
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self.clear)

    def take(self, count: int) -> bytes:
        with self._lock:
            if len(self._pool) < count:
                self._pool = os.urandom(max(self._size, count))
            taken, self._pool = self._pool[:count], self._pool[count:]
        return taken

    def clear(self) -> None:
        self._pool = b""


_RANDOM = _RandomPool()


def new_job_id() -> str:
    """128 random bits from the OS's CSPRNG, URL-safe base64 without padding (22 characters).

    Never with a leading ``-``, which a command line would take for an option: such a draw (1 in
    64) is drawn again, which leaves 127.9 bits of randomness."""
    while True:
        job_id = base64.urlsafe_b64encode(_RANDOM.take(16)).rstrip(b"=").decode()
        if not job_id.startswith("-"):
            return job_id


def new_job(
    operation: str,
    *,
    now: datetime,
    input: Any = None,
    owner: str = "",
    resource: str | None = None,
    max_attempts: int = 1,
    message: str = "Queued",
    callback: dict[str, str] | None = None,
) -> Job:
    created = next_timestamp(None, now)
    return Job(
        id=new_job_id(),
        operation=operation,
        state=JobState.QUEUED,
        message=message,
        progress=None,
        create_time=created,
        start_time=None,
        end_time=None,
        last_modified=created,
        resource=resource,
        owner=owner,
        input=input,
        max_attempts=max(1, max_attempts),
        callback=callback,
    )


def _evolver() -> Callable[..., Job]:
    """``evolve(job, **changes)``: :func:`dataclasses.replace` for a Job, at half its cost (the
    checks ``replace`` makes on every call are made here once, when the function is written)."""
    names = [f.name for f in dataclasses.fields(Job)]
    keep = object()
    source = (
        f"def evolve(job, *, {', '.join(f'{name}=keep' for name in names)}):\n"
        f"    return Job({', '.join(f'job.{name} if {name} is keep else {name}' for name in names)})\n"
    )
    scope: dict[str, Any] = {"Job": Job, "keep": keep}
    exec(source, scope)  # written from the field names above, as dataclasses does
    evolve: Callable[..., Job] = scope["evolve"]
    return evolve


#: A changed copy of a job (the transitions below use it on every change).
evolve = _evolver()


def _require(job: Job, *allowed: JobState) -> None:
    if job.state not in allowed:
        names = " or ".join(state.value for state in allowed)
        raise InvalidTransition(f"job {job.id} is {job.state.value}, not {names}")


def _changed(job: Job, now: datetime, **changes: Any) -> Job:
    return evolve(job, last_modified=next_timestamp(job.last_modified, now), **changes)


def start(job: Job, *, now: datetime, worker: str, lease_expires: datetime) -> Job:
    """queued → running, held by ``worker`` until ``lease_expires``."""
    _require(job, JobState.QUEUED)
    return _changed(
        job,
        now,
        state=JobState.RUNNING,
        message="Running",
        start_time=next_timestamp(job.last_modified, now),
        attempts=job.attempts + 1,
        lease_owner=worker,
        lease_expires=lease_expires,
    )


def report(job: Job, *, now: datetime, message: str | None = None, progress: int | None = None) -> Job:
    """A running job reports a new message and/or progress (0..100)."""
    _require(job, JobState.RUNNING)
    if progress is not None and not 0 <= progress <= 100:
        raise ValueError(f"progress must be between 0 and 100, not {progress}")
    return _changed(
        job,
        now,
        message=job.message if message is None else message,
        progress=job.progress if progress is None else progress,
    )


def succeed(job: Job, *, now: datetime, result: Any, message: str | None = None) -> Job:
    """running → success with a JSON result."""
    _require(job, JobState.RUNNING)
    stamp = next_timestamp(job.last_modified, now)
    return evolve(
        job,
        state=JobState.SUCCESS,
        message=message if message is not None else "Completed",
        progress=100 if job.progress is not None else None,
        result=result,
        end_time=stamp,
        last_modified=stamp,
        lease_owner=None,
        lease_expires=None,
    )


def fail(job: Job, *, now: datetime, error: JobError) -> Job:
    """queued → failure (cancelled or rejected before it ran) or running → failure."""
    _require(job, JobState.QUEUED, JobState.RUNNING)
    stamp = next_timestamp(job.last_modified, now)
    return evolve(
        job,
        state=JobState.FAILURE,
        message=error.message,
        error=error,
        result=None,
        end_time=stamp,
        last_modified=stamp,
        lease_owner=None,
        lease_expires=None,
    )


def request_cancel(job: Job, *, now: datetime) -> Job:
    """Cancel: a queued job fails at once; a running one is asked to stop (a visible change)."""
    if job.state is JobState.QUEUED:
        return fail(job, now=now, error=JobError("cancelled", "Cancelled before it started"))
    _require(job, JobState.RUNNING)
    if job.cancel_requested:
        return job
    return _changed(job, now, cancel_requested=True, message="Cancellation requested")


def lose(job: Job, *, now: datetime) -> Job:
    """The worker holding a running job is gone: retry if the operation allows it, else fail.

    SPEC §5: a job runs at most once by default (``worker_lost``); an operation declared safe
    to retry goes back to ``queued`` while it has attempts left.
    """
    _require(job, JobState.RUNNING)
    if job.attempts < job.max_attempts and not job.cancel_requested:
        return _changed(
            job,
            now,
            state=JobState.QUEUED,
            message=f"Requeued after its worker was lost (attempt {job.attempts} of {job.max_attempts})",
            lease_owner=None,
            lease_expires=None,
        )
    if job.cancel_requested:
        return fail(job, now=now, error=JobError("cancelled", "Cancelled while its worker was lost"))
    return fail(
        job,
        now=now,
        error=JobError("worker_lost", "The worker running this job stopped before it finished"),
    )
