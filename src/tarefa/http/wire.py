"""The Job on the wire (SPEC §1): serialisation, ``fields`` selection, headers, OpenAPI schemas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from starlette.responses import Response

from ..model import Job, format_timestamp, to_microseconds

JOB_FIELDS = (
    "id", "operation", "state", "message", "progress", "create_time", "start_time", "end_time",
    "last_modified", "result", "error", "resource", "_links",
)  # fmt: skip
ALWAYS_INCLUDED = frozenset({"id", "state", "last_modified", "_links"})


def _stamp(value: Any) -> str | None:
    return None if value is None else format_timestamp(value)


def job_to_wire(job: Job, jobs_href: str, fields: frozenset[str] | None = None) -> dict[str, Any]:
    """The Job object as SPEC §1 shows it; ``fields`` limits it (None: every field)."""
    body: dict[str, Any] = {
        "id": job.id,
        "operation": job.operation,
        "state": job.state.value,
        "message": job.message,
        "progress": job.progress,
        "create_time": _stamp(job.create_time),
        "start_time": _stamp(job.start_time),
        "end_time": _stamp(job.end_time),
        "last_modified": _stamp(job.last_modified),
    }
    if job.state.value == "success":
        body["result"] = job.result
    if job.error is not None:
        body["error"] = {"code": job.error.code, "message": job.error.message}
    if job.resource is not None:
        body["resource"] = {"href": job.resource}
    body["_links"] = {"self": {"href": f"{jobs_href}/{job.id}"}}
    if fields is None:
        return body
    return {name: value for name, value in body.items() if name in fields or name in ALWAYS_INCLUDED}


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


class JobModel(BaseModel):
    """An asynchronous job (SPEC §1)."""

    id: str = Field(description="opaque, unguessable, URL-safe")
    # Only id, state, last_modified and _links are in every answer: ``fields`` may leave out the rest.
    operation: str | None = Field(None, description="the registered operation, e.g. cluster.deploy")
    state: Literal["queued", "running", "success", "failure"]
    message: str | None = Field(None, description="the latest human-readable status line")
    progress: int | None = Field(None, ge=0, le=100)
    create_time: str | None = Field(None, description="RFC 3339, UTC, microseconds, Z")
    start_time: str | None = None
    end_time: str | None = None
    last_modified: str = Field(description="changes on every visible change; strictly increasing")
    result: Any = Field(None, description="only on success")
    error: JobErrorModel | None = Field(None, description="only on failure")
    resource: Href | None = Field(None, description="the resource the job creates or changes")
    links: SelfLink = Field(alias="_links")


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
