"""The Job on the wire (SPEC §1): serialisation, ``fields`` selection, headers, OpenAPI schemas."""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field, create_model
from starlette.responses import Response

from ..model import WIRE_FIELDS, FieldInfo, Job, JobError, JobEvent, JobState, format_timestamp, to_microseconds

#: The Job's fields on the wire, in order (derived from the model's one field list).
JOB_FIELDS = (*(field.name for field in WIRE_FIELDS), "_links")
ALWAYS_INCLUDED = frozenset({"id", "state", "last_modified", "_links"})


def _stamp(value: Any) -> str | None:
    return None if value is None else format_timestamp(value)


def _error(error: JobError) -> dict[str, str]:
    return {"code": error.code, "message": error.message}


#: How each kind of Job field is written on the wire (other kinds go as they are).
_WRITE: dict[str, Callable[[Any], Any]] = {
    "state": lambda state: state.value,
    "time": _stamp,
    "error": _error,
    "href": lambda href: {"href": href},
}


def _shown(field: FieldInfo, job: Job, value: Any, admin: bool) -> bool:
    if field.wire == "admin":
        return admin
    if field.wire == "if_set":
        return value is not None
    if field.wire == "on_success":
        return job.state is JobState.SUCCESS
    return True


def job_to_wire(
    job: Job, jobs_href: str, fields: frozenset[str] | None = None, *, admin: bool = False
) -> dict[str, Any]:
    """The Job object as SPEC §1 shows it; ``fields`` limits it (None: every field); ``admin``
    adds the fields only administrators see (``owner``)."""
    body: dict[str, Any] = {}
    for field in WIRE_FIELDS:
        value = getattr(job, field.name)
        if _shown(field, job, value, admin):
            write = _WRITE.get(field.kind)
            body[field.name] = value if write is None or value is None else write(value)
    body["_links"] = {"self": {"href": f"{jobs_href}/{job.id}"}}
    if fields is None:
        return body
    return {name: value for name, value in body.items() if name in fields or name in ALWAYS_INCLUDED}


def event_to_wire(event: JobEvent) -> dict[str, Any]:
    """An event of a job's history (SPEC §10)."""
    body: dict[str, Any] = {
        "seq": event.seq,
        "job_id": event.job_id,
        "time": format_timestamp(event.time),
        "state": event.state.value,
        "message": event.message,
        "progress": event.progress,
    }
    if event.error is not None:
        body["error"] = _error(event.error)
    return body


def etag(job: Job) -> str:
    """Changes whenever ``last_modified`` does."""
    return f'"{job.id[:8]}-{to_microseconds(job.last_modified):x}"'


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, dict(headers or {}), media_type="application/json")


def job_headers(job: Job, *, retry_after: int | None = None) -> dict[str, str]:
    headers = {"Cache-Control": "no-store", "ETag": etag(job)}
    if retry_after is not None and not job.is_terminal:
        headers["Retry-After"] = str(retry_after)
    return headers


# -- OpenAPI schemas (documentation of the wire format; answers are built by job_to_wire) --------


class Href(BaseModel):
    href: str


class SelfLink(BaseModel):
    self: Href


class JobErrorModel(BaseModel):
    code: str = Field(description="snake_case, for programs: cancelled, worker_lost, internal_error, ...")
    message: str = Field(description="for people")


#: The OpenAPI type of each kind of Job field.
_SCHEMA: dict[str, Any] = {
    "text": str,
    "int": int,
    "state": Literal["queued", "running", "success", "failure"],
    "time": str,
    "json": Any,
    "error": JobErrorModel,
    "href": Href,
}


_HINTS = typing.get_type_hints(Job)
#: Examples for the OpenAPI document (a real value helps more than "string").
_EXAMPLES: dict[str, Any] = {
    "id": "vVA8ONh3Jh9PhhRLjS6i-w",
    "operation": "host.register",
    "state": "running",
    "message": "Contacting host 10.0.0.11",
    "progress": 40,
    "create_time": "2026-11-28T15:40:21.606403Z",
    "start_time": "2026-11-28T15:40:21.609922Z",
    "end_time": None,
    "last_modified": "2026-11-28T15:40:22.614152Z",
    "result": {"name": "esx-01", "state": "registered"},
    "resource": {"href": "/api/hosts/esx-01"},
}


def _model_field(field: FieldInfo) -> tuple[Any, Any]:
    """A Job field for pydantic: required when every answer has it (``fields=`` cannot leave it
    out; typed nullable when it may be null), optional otherwise."""
    kind: Any = _SCHEMA[field.kind]
    examples = [_EXAMPLES[field.name]] if field.name in _EXAMPLES else None
    if field.wire != "always" or field.name not in ALWAYS_INCLUDED:
        return kind | None, Field(None, description=field.doc, examples=examples)
    nullable = type(None) in typing.get_args(_HINTS[field.name])
    return (kind | None) if nullable else kind, Field(description=field.doc, examples=examples)


_JobFields: Any = create_model(  # type: ignore[call-overload]
    "_JobFields",
    **{field.name: _model_field(field) for field in WIRE_FIELDS},
    links=(SelfLink, Field(alias="_links")),
)


class JobModel(_JobFields):  # type: ignore[misc]
    """An asynchronous job (SPEC §1); its fields are derived from the model's one field list."""


class JobEnvelope(BaseModel):
    """The answer of an asynchronous call (202, or 200 when ``return_timeout`` saw it end)."""

    job: JobModel


class JobRecord(BaseModel):
    record: JobModel


class NextLink(BaseModel):
    next: Href | None = None


class JobList(BaseModel):
    num_records: int
    records: list[JobModel]
    links: NextLink = Field(alias="_links")


class ErrorDetail(BaseModel):
    code: str
    message: str
    target: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class JobEventModel(BaseModel):
    """One visible change of a job (SPEC §10)."""

    seq: int = Field(description="unique in the store, increasing for one job")
    job_id: str
    time: str = Field(description="the job's last_modified after this change")
    state: Literal["queued", "running", "success", "failure"]
    message: str
    progress: int | None = None
    error: JobErrorModel | None = Field(None, description="only on failure")


class EventList(BaseModel):
    num_records: int
    records: list[JobEventModel]
    links: NextLink = Field(alias="_links")
