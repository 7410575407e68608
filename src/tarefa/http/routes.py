"""The job routes (SPEC §3, §4): ``GET /jobs``, ``GET/PATCH/DELETE /jobs/{id}``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..jobs import ANYONE, JobNotFound
from ..store import JobAlreadyTerminal, JobNotTerminal, JobQuery
from .access import viewer_of
from .errors import REQUEST_ID_HEADER, ApiError, request_id
from .params import (
    After,
    CancelAction,
    Cursor,
    Fields,
    LastModified,
    MaxRecords,
    OperationFilter,
    OrderBy,
    PollTimeout,
    StateFilter,
    decode_cursor,
    encode_cursor,
    parse_baseline,
    parse_fields,
    parse_order,
    parse_states,
)
from .streams import STREAM_RESPONSE as STREAM
from .streams import job_event_stream, wants_stream
from .wire import (
    ErrorBody,
    EventList,
    JobEnvelope,
    JobList,
    JobRecord,
    event_to_wire,
    job_headers,
    job_to_wire,
    json_response,
)

if TYPE_CHECKING:
    from .mount import Tarefa

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A malformed parameter"},
    404: {"model": ErrorBody, "description": "No such job (or not yours)"},
}


def job_routes(engine: Tarefa) -> APIRouter:
    """The router of the job API; :meth:`Tarefa.mount` includes it under ``<prefix>/jobs``.
    Each route is a translation between HTTP and one call of :class:`~tarefa.jobs.Jobs`."""
    router = APIRouter(tags=["jobs"], responses=ERRORS, dependencies=[Depends(viewer_of)])
    jobs = engine.jobs

    @router.get("", response_model=JobList, summary="List jobs")
    async def list_jobs(
        request: Request,
        state: StateFilter = None,
        operation: OperationFilter = None,
        max_records: MaxRecords = 100,
        order_by: OrderBy = "create_time desc",
        fields: Fields = None,
        cursor: Cursor = None,
    ) -> Response:
        selected = parse_fields(fields)
        order, descending = parse_order(order_by)
        query = JobQuery(
            states=parse_states(state),
            operation=operation,
            order_by="last_modified" if order == "last_modified" else "create_time",
            descending=descending,
            limit=max_records + 1,
            after=decode_cursor(cursor) if cursor else None,
        )
        viewer = await viewer_of(request)
        found = await jobs.page(viewer, query)
        page, more = found[:max_records], len(found) > max_records
        body = _page([job_to_wire(job, engine.jobs_href, selected, admin=viewer.shows_owners) for job in page])
        if more:
            last = page[-1]
            moment = last.last_modified if order == "last_modified" else last.create_time
            body["_links"]["next"] = {"href": _next_href(request, engine.jobs_href, encode_cursor(moment, last.id))}
        return json_response(body, headers={"Cache-Control": "no-store"})

    # ``/api/jobs/`` is the list too, not a bare redirect.
    router.add_api_route("/", list_jobs, methods=["GET"], include_in_schema=False)

    @router.get(
        "/{job_id}",
        response_model=JobRecord,
        summary="Read a job (standard or long poll)",
        responses={429: {"model": ErrorBody, "description": "Too many of your long polls are open at once"}},
    )
    async def get_job(
        request: Request,
        job_id: str,
        poll_timeout: PollTimeout = None,
        last_modified: LastModified = None,
        fields: Fields = None,
    ) -> Response:
        selected = parse_fields(fields)
        viewer = await viewer_of(request)
        with _translated(job_id):
            if poll_timeout is None:
                job = await jobs.get(viewer, job_id)
            else:
                baseline = parse_baseline(last_modified)
                with engine.waiting_limit.hold(None if viewer is ANYONE else viewer.name):
                    job = await jobs.wait_for_change(viewer, job_id, baseline=baseline, timeout=poll_timeout)
        retry_after = engine.retry_after if poll_timeout is None else None
        return json_response(
            {"record": job_to_wire(job, engine.jobs_href, selected, admin=viewer.shows_owners)},
            headers=job_headers(job, retry_after=retry_after),
        )

    @router.get(
        "/{job_id}/events", response_model=EventList, summary="Read (or stream) a job's history", responses=STREAM
    )
    async def job_events(
        request: Request,
        job_id: str,
        after: After = 0,
        max_records: MaxRecords = 100,
    ) -> Response:
        if wants_stream(request):
            with _translated(job_id):
                return await job_event_stream(engine, request, job_id, after)
        with _translated(job_id):
            events = await jobs.history(await viewer_of(request), job_id, after=after, limit=max_records + 1)
        page = events[:max_records]
        body = _page([event_to_wire(event) for event in page])
        if len(events) > max_records:
            params = {k: v for k, v in request.query_params.items() if k != "after"}
            params["after"] = str(page[-1].seq)
            body["_links"]["next"] = {"href": f"{engine.jobs_href}/{job_id}/events?{urlencode(params)}"}
        return json_response(body, headers={"Cache-Control": "no-store"})

    @router.patch(
        "/{job_id}",
        status_code=202,
        response_model=JobEnvelope,
        summary="Cancel a job",
        responses={409: {"model": ErrorBody, "description": "The job has already ended"}},
    )
    async def change_job(request: Request, job_id: str, action: CancelAction) -> Response:
        viewer = await viewer_of(request)
        with _translated(job_id):
            job = await jobs.cancel(viewer, job_id)
        return json_response(
            {"job": job_to_wire(job, engine.jobs_href, admin=viewer.shows_owners)}, 202, job_headers(job)
        )

    @router.delete(
        "/{job_id}",
        status_code=204,
        summary="Delete an ended job",
        responses={409: {"model": ErrorBody, "description": "The job is still queued or running"}},
    )
    async def delete_job(request: Request, job_id: str) -> Response:
        with _translated(job_id):
            await jobs.delete(await viewer_of(request), job_id)
        return Response(status_code=204, headers={REQUEST_ID_HEADER: request_id(request)})

    return router


def _page(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"num_records": len(records), "records": records, "_links": {}}


def _next_href(request: Request, jobs_href: str, cursor: str) -> str:
    params = {k: v for k, v in request.query_params.items() if k != "cursor"}
    params["cursor"] = cursor
    return f"{jobs_href}?{urlencode(params)}"


@contextlib.contextmanager
def _translated(job_id: str) -> Iterator[None]:
    """The application layer's refusals as the SPEC's answers."""
    try:
        yield
    except (JobNotFound, JobAlreadyTerminal, JobNotTerminal) as exc:
        raise _refusal(job_id, exc) from None


def _refusal(job_id: str, exc: JobNotFound | JobAlreadyTerminal | JobNotTerminal) -> ApiError:
    """The SPEC's answer to one of the application layer's refusals."""
    if isinstance(exc, JobNotFound):
        message = f"there is no job {job_id!r} (or it has been deleted)"
        return ApiError(404, "job_not_found", message, target="id")
    if isinstance(exc, JobAlreadyTerminal):
        return ApiError(409, "job_terminal", f"job {job_id} has already ended ({exc.job.state.value})")
    return ApiError(
        409,
        "job_not_terminal",
        f"job {job_id} is still {exc.job.state.value}: cancel it, and delete it once it has ended",
    )
