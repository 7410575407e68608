"""The callback outbox (SPEC §10): the values the store keeps for callbacks. Pure, no I/O.

When a job with a callback subscription (:attr:`tarefa.model.Job.callback`) records an event the
subscription asks for, the job rule adds a :class:`CallbackDelivery` to the outbox in the same
transaction as the event (:func:`deliveries_for`). Workers claim due deliveries under a lease,
POST them, and record each :class:`CallbackAttempt` (:mod:`tarefa.callbacks`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from ..model import WIRE_FIELDS, Job, JobError, JobEvent, JobState, parse_timestamp

#: ``Callback-Events`` values: every event, or only the job's end (the default).
ALL_EVENTS, TERMINAL_EVENTS = "all", "terminal"
EVENTS = (ALL_EVENTS, TERMINAL_EVENTS)
#: The outcomes of an attempt; all but ``failed`` end the delivery.
DELIVERED, FAILED, GONE, EXPIRED, REFUSED = "delivered", "failed", "gone", "expired", "refused"
OUTCOMES = (DELIVERED, FAILED, GONE, EXPIRED, REFUSED)


@dataclass(frozen=True, slots=True)
class CallbackDelivery:
    """One POST to make, at least once: ``id`` is the ``webhook-id`` (the same on every retry),
    ``body`` the snapshot of the job and its event when the event committed (:func:`snapshot`)."""

    id: str
    job_id: str
    seq: int
    url: str
    body: bytes
    create_time: datetime
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class CallbackAttempt:
    """One try of a delivery: when, how long, the status code or the error, and its outcome.
    ``num`` is given by the store (increasing per store)."""

    delivery_id: str
    job_id: str
    seq: int
    url: str
    time: datetime
    duration: float
    status: int | None
    error: str | None
    outcome: str
    num: int = 0


def wants(job: Job, event: JobEvent) -> bool:
    """True when the job's callback subscription asks for this event."""
    callback = job.callback
    if not callback:
        return False
    return bool(callback.get("events") == ALL_EVENTS or event.is_terminal)


def deliveries_for(changes: Iterable[tuple[Job, JobEvent]], now: datetime) -> tuple[CallbackDelivery, ...]:
    """The outbox rows for these committed (job, event) pairs."""
    return tuple(
        CallbackDelivery(new_webhook_id(), job.id, event.seq, job.callback["url"], snapshot(job, event), now)
        for job, event in changes
        if wants(job, event)
    )


def new_webhook_id() -> str:
    """A delivery's ``webhook-id``: random, the same on each of its attempts."""
    return f"msg_{secrets.token_urlsafe(18)}"


def snapshot(job: Job, event: JobEvent) -> bytes:
    """The job (its wire fields) and the event as JSON, as they were when the event committed."""
    fields = {field.name: getattr(job, field.name) for field in WIRE_FIELDS}
    return orjson.dumps({"job": fields, "event": event})


def from_snapshot(body: bytes) -> tuple[Job, JobEvent]:
    """The job and the event of a :func:`snapshot`."""
    data = orjson.loads(body)
    return _job(data["job"]), _event(data["event"])


def _job(values: dict[str, Any]) -> Job:
    for name in ("create_time", "start_time", "end_time", "last_modified"):
        values[name] = None if values[name] is None else parse_timestamp(values[name])
    values["state"] = JobState(values["state"])
    values["error"] = None if values.get("error") is None else JobError(**values["error"])
    return Job(**values)


def _event(values: dict[str, Any]) -> JobEvent:
    values["time"] = parse_timestamp(values["time"])
    values["state"] = JobState(values["state"])
    values["error"] = None if values.get("error") is None else JobError(**values["error"])
    return JobEvent(**values)
