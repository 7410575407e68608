"""Callbacks on the wire (SPEC §10): the ``Callback-URL``/``Callback-Events`` headers of an
asynchronous call, the body a callback POSTs, and ``GET /jobs/{id}/callbacks``, the attempts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from ..callbacks import CallbackRejected, CallbackSettings, check_target, subscription
from ..jobs import JobNotFound
from ..model import format_timestamp
from ..store.outbox import OUTCOMES, CallbackAttempt, from_snapshot
from .access import viewer_of
from .errors import ApiError
from .params import After, MaxRecords
from .wire import ErrorBody, NextLink, event_to_wire, job_to_wire, json_response

if TYPE_CHECKING:
    from .mount import Tarefa

CALLBACK_URL, CALLBACK_EVENTS = "Callback-URL", "Callback-Events"
#: The documented form of a Callback-URL (what the server checks beyond it: docs/callbacks.md).
CALLBACK_URL_FORM = r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#\s@]+([/?#]\S*)?$"


async def callback_of(request: Request, settings: CallbackSettings) -> dict[str, str] | None:
    """The request's callback subscription, its target checked now (400 otherwise)."""
    url, events = request.headers.get(CALLBACK_URL), request.headers.get(CALLBACK_EVENTS)
    try:
        callback = subscription(url, events, settings)
        if callback is not None:
            await check_target(callback["url"], settings.allow)
    except CallbackRejected as exc:
        raise ApiError(400, exc.code, str(exc), target=exc.target) from None
    return callback


def render(engine: Tarefa, snapshot: bytes) -> bytes:
    """A callback's body: ``{"event": <event>, "job": <Job as on the wire>}``."""
    job, event = from_snapshot(snapshot)
    return orjson.dumps({"event": event_to_wire(event), "job": job_to_wire(job, engine.jobs_href)})


def attempt_to_wire(attempt: CallbackAttempt) -> dict[str, Any]:
    """One attempt, as ``GET /jobs/{id}/callbacks`` lists it."""
    body: dict[str, Any] = {
        "num": attempt.num,
        "webhook_id": attempt.delivery_id,
        "seq": attempt.seq,
        "url": attempt.url,
        "time": format_timestamp(attempt.time),
        "duration_ms": round(attempt.duration * 1000, 3),
        "status_code": attempt.status,
        "outcome": attempt.outcome,
    }
    if attempt.error is not None:
        body["error"] = attempt.error
    return body


class CallbackAttemptModel(BaseModel):
    """One attempt to deliver a callback."""

    num: int = Field(description="increasing in the store; page with after=<num>")
    webhook_id: str = Field(description="the delivery's webhook-id header: the same on every retry")
    seq: int = Field(description="the event delivered")
    url: str
    time: str = Field(description="when the attempt began")
    duration_ms: float
    status_code: int | None = Field(description="the receiver's status code, or null when none came")
    outcome: str = Field(description=f"one of {', '.join(OUTCOMES)}; failed is retried")
    error: str | None = Field(None, description="why no status code came, or why the target was refused")


class CallbackAttemptList(BaseModel):
    num_records: int
    records: list[CallbackAttemptModel]
    links: NextLink = Field(alias="_links")


def callback_routes(engine: Tarefa) -> APIRouter:
    """``GET {jobs}/{id}/callbacks``; :meth:`Tarefa.mount` includes it beside the job routes."""
    router = APIRouter(tags=["jobs"], dependencies=[Depends(viewer_of)])

    @router.get(
        "/{job_id}/callbacks",
        response_model=CallbackAttemptList,
        summary="Read the attempts to deliver a job's callbacks",
        responses={
            400: {"model": ErrorBody, "description": "A malformed parameter"},
            404: {"model": ErrorBody, "description": "No such job (or not yours)"},
        },
    )
    async def job_callbacks(request: Request, job_id: str, after: After = 0, max_records: MaxRecords = 100) -> Response:
        viewer = await viewer_of(request)
        try:
            attempts = await engine.jobs.callback_attempts(viewer, job_id, after=after, limit=max_records + 1)
        except JobNotFound:
            message = f"there is no job {job_id!r} (or it has been deleted)"
            raise ApiError(404, "job_not_found", message, target="id") from None
        page = attempts[:max_records]
        body: dict[str, Any] = {"num_records": len(page), "records": [attempt_to_wire(a) for a in page], "_links": {}}
        if len(attempts) > max_records:
            params = {k: v for k, v in request.query_params.items() if k != "after"}
            params["after"] = str(page[-1].num)
            body["_links"]["next"] = {"href": f"{engine.jobs_href}/{job_id}/callbacks?{urlencode(params)}"}
        return json_response(body, headers={"Cache-Control": "no-store"})

    return router
