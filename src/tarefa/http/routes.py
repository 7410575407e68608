"""The job routes (SPEC §3, §4): ``GET /jobs``, ``GET/PATCH/DELETE /jobs/{id}``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..store import JobAlreadyTerminal, JobNotTerminal, JobQuery
from .errors import REQUEST_ID_HEADER, ApiError, request_id
from .params import (
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
from .wire import (
    ErrorBody,
    JobEnvelope,
    JobList,
    JobRecord,
    job_headers,
    job_to_wire,
    json_response,
)

if TYPE_CHECKING:
    from ..engine import Tarefa

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A malformed parameter"},
    404: {"model": ErrorBody, "description": "No such job (or not yours)"},
}


def job_routes(engine: Tarefa) -> APIRouter:
    """The router of the job API; :meth:`Tarefa.mount` includes it under ``<prefix>/jobs``."""
    router = APIRouter(tags=["jobs"], responses=ERRORS)

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
            owner=engine.visible_owner(request),
            states=parse_states(state),
            operation=operation,
            order_by="last_modified" if order == "last_modified" else "create_time",
            descending=descending,
            limit=max_records + 1,
            after=decode_cursor(cursor) if cursor else None,
        )
        jobs = await engine.store.list_jobs(query)
        page, more = jobs[:max_records], len(jobs) > max_records
        body: dict[str, Any] = {
            "num_records": len(page),
            "records": [job_to_wire(job, engine.jobs_href, selected) for job in page],
            "_links": {},
        }
        if more:
            last = page[-1]
            moment = last.last_modified if order == "last_modified" else last.create_time
            params = {k: v for k, v in request.query_params.items() if k != "cursor"}
            params["cursor"] = encode_cursor(moment, last.id)
            body["_links"]["next"] = {"href": f"{engine.jobs_href}?{urlencode(params)}"}
        return json_response(body, headers={"Cache-Control": "no-store"})

    @router.get("/{job_id}", response_model=JobRecord, summary="Read a job (standard or long poll)")
    async def get_job(
        request: Request,
        job_id: str,
        poll_timeout: PollTimeout = None,
        last_modified: LastModified = None,
        fields: Fields = None,
    ) -> Response:
        selected = parse_fields(fields)
        owner = engine.visible_owner(request)
        if poll_timeout is None:
            job = await engine.store.get_job(job_id, owner)
        else:
            job = await engine.wait_for_change(
                job_id, owner, baseline=parse_baseline(last_modified), timeout=poll_timeout
            )
        if job is None:
            raise _not_found(job_id)
        retry_after = engine.retry_after if poll_timeout is None else None
        return json_response(
            {"record": job_to_wire(job, engine.jobs_href, selected)},
            headers=job_headers(job, retry_after=retry_after),
        )

    @router.patch(
        "/{job_id}",
        status_code=202,
        response_model=JobEnvelope,
        summary="Cancel a job",
        responses={409: {"model": ErrorBody, "description": "The job has already ended"}},
    )
    async def change_job(request: Request, job_id: str, action: CancelAction) -> Response:
        if action != "cancel":
            raise ApiError(400, "invalid_parameter", f"action {action!r}: the only action is cancel", target="action")
        try:
            job = await engine.store.cancel_job(job_id, engine.visible_owner(request))
        except JobAlreadyTerminal as exc:
            raise ApiError(409, "job_terminal", f"job {job_id} has already ended ({exc.job.state.value})") from None
        if job is None:
            raise _not_found(job_id)
        return json_response({"job": job_to_wire(job, engine.jobs_href)}, 202, job_headers(job))

    @router.delete(
        "/{job_id}",
        status_code=204,
        summary="Delete an ended job",
        responses={409: {"model": ErrorBody, "description": "The job is still queued or running"}},
    )
    async def delete_job(request: Request, job_id: str) -> Response:
        try:
            deleted = await engine.store.delete_job(job_id, engine.visible_owner(request))
        except JobNotTerminal as exc:
            raise ApiError(
                409,
                "job_not_terminal",
                f"job {job_id} is still {exc.job.state.value}: cancel it, and delete it once it has ended",
            ) from None
        if not deleted:
            raise _not_found(job_id)
        return Response(status_code=204, headers={REQUEST_ID_HEADER: request_id(request)})

    return router


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "job_not_found", f"there is no job {job_id!r} (or it has been deleted)", target="id")
