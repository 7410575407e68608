"""Server-sent event streams over HTTP (SPEC §10): ``GET {prefix}/jobs/<id>/events`` and
``GET {prefix}/events`` with ``Accept: text/event-stream``, and ``GET {prefix}/events`` as JSON pages.

The wire format is sse-starlette's (:class:`~sse_starlette.EventSourceResponse`): each event is
``id: <seq>`` / ``event: job`` / ``data: <event JSON>``, and a comment line is sent every
:attr:`~tarefa.streams.EventStreams.heartbeat` seconds. What to send, and when, is
:mod:`tarefa.streams`; this module only translates a stream into HTTP: the resume point
(``Last-Event-ID``, else ``after``), the per-user limit (``429``), the gauge of open streams.

A job's stream ends after the job's terminal event; a browser's ``EventSource`` then reconnects
with the last id, and is answered ``204 No Content`` — which tells it to stop — once nothing is
left to send. A graceful stop ends every stream; a client reconnecting later resumes.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.responses import Response

from ..jobs import ANYONE, Viewer
from ..model import JobEvent
from ..store import EventQuery, StoreError
from ..streams import EventStream
from .access import viewer_of
from .params import After, MaxRecords, OperationFilter, StateFilter, invalid, parse_states
from .wire import ErrorBody, EventList, event_to_wire, json_response

if TYPE_CHECKING:
    from .mount import Tarefa

EVENT_STREAM = "text/event-stream"
LAST_EVENT_ID = "Last-Event-ID"
_SEQ = re.compile(r"[0-9]{1,19}", re.ASCII)
_SEP = "\n"

#: The OpenAPI description of a stream answer (both routes).
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "With `Accept: text/event-stream`: a server-sent event stream. Each event is `id: <seq>`, "
            "`event: job`, `data: <event JSON>` (the records of the JSON pages); a comment line at least "
            "every 15 s while idle. Resume with `Last-Event-ID` (or `after`)."
        ),
        "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
    },
    204: {"description": "A stream of a job that has ended, with nothing left to send: do not reconnect"},
    429: {"model": ErrorBody, "description": "Too many of your long polls and streams are open at once"},
}


def wants_stream(request: Request) -> bool:
    """True if the request asks for a server-sent event stream."""
    return EVENT_STREAM in request.headers.get("accept", "")


def resume_point(request: Request, after: int) -> int:
    """Where a stream starts: after ``Last-Event-ID`` if given (a ``seq``), else after ``after``."""
    text = request.headers.get(LAST_EVENT_ID)
    if text is None:
        return after
    if not _SEQ.fullmatch(text.strip()) or int(text) > 2**63 - 1:
        raise invalid(LAST_EVENT_ID, "Last-Event-ID is the id of an event this server sent: its seq, such as 42")
    return int(text)


async def job_event_stream(engine: Tarefa, request: Request, job_id: str, after: int) -> Response:
    """The stream of one job's events (``GET .../jobs/<id>/events`` with the Accept header);
    the caller translates :class:`~tarefa.jobs.JobNotFound` as for the JSON pages."""
    viewer = await viewer_of(request)
    start = resume_point(request, after)
    with _holding(engine, viewer) as release:
        stream = await engine.streams.follow_job(viewer, job_id, after=start)
        if stream is None:
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        return _respond(engine, stream, release.pop_all())


def events_routes(engine: Tarefa) -> APIRouter:
    """``GET {prefix}/events``: every visible job's events, as JSON pages or a stream."""
    router = APIRouter(tags=["jobs"])

    @router.get(
        "/events",
        response_model=EventList,
        summary="Read (or stream) the events of every job you may see",
        responses={400: {"model": ErrorBody, "description": "A malformed parameter"}, **STREAM_RESPONSE},
    )
    async def all_events(
        request: Request,
        state: StateFilter = None,
        operation: OperationFilter = None,
        after: After = 0,
        max_records: MaxRecords = 100,
    ) -> Response:
        viewer = await viewer_of(request)
        query = EventQuery(states=parse_states(state), operation=operation, after=after, limit=max_records + 1)
        if wants_stream(request):
            query = EventQuery(states=query.states, operation=operation, after=resume_point(request, after))
            with _holding(engine, viewer) as release:
                stream = await engine.streams.follow_all(viewer, query)
                return _respond(engine, stream, release.pop_all())
        events = await engine.streams.page_all(viewer, query)
        page = events[:max_records]
        body: dict[str, Any] = {"num_records": len(page), "records": [event_to_wire(e) for e in page], "_links": {}}
        if len(events) > max_records:
            params = {k: v for k, v in request.query_params.items() if k != "after"}
            params["after"] = str(page[-1].seq)
            body["_links"]["next"] = {"href": f"{request.url.path}?{urlencode(params)}"}
        return json_response(body, headers={"Cache-Control": "no-store"})

    return router


@contextlib.contextmanager
def _holding(engine: Tarefa, viewer: Viewer) -> Iterator[contextlib.ExitStack]:
    """One of the user's open waits (``429`` beyond the limit), held until the stream ends:
    ``release.pop_all()`` hands it over to the response; on an error it is let go at once."""
    with contextlib.ExitStack() as release:
        release.enter_context(engine.waiting_limit.hold(None if viewer is ANYONE else viewer.name))
        yield release


def _respond(engine: Tarefa, stream: EventStream, release: contextlib.ExitStack) -> Response:
    gauge = engine.metrics.event_streams
    gauge.inc()
    done = _Once(stream, release, gauge.dec)
    return EventSourceResponse(
        _frames(engine, stream, done),
        ping=engine.streams.heartbeat,
        ping_message_factory=lambda: ServerSentEvent(comment="", sep=_SEP),
        sep=_SEP,
        background=BackgroundTask(done),
        client_close_handler_callable=done.after_disconnect,
        headers={"Cache-Control": "no-store"},
    )


async def _frames(engine: Tarefa, stream: EventStream, done: _Once) -> AsyncIterator[ServerSentEvent | bytes]:
    try:
        async for event in stream:
            yield engine.streams.encoded(event, _frame)
    except StoreError as exc:  # the stream ends; the client resumes with its last id
        yield ServerSentEvent(comment=f"the job store failed: {exc}", sep=_SEP)
    finally:
        done()


def _frame(event: JobEvent) -> bytes:
    """``id: <seq>`` / ``event: job`` / ``data: <event JSON>``."""
    data = orjson.dumps(event_to_wire(event)).decode()
    return ServerSentEvent(data, event="job", id=str(event.seq), sep=_SEP).encode()


class _Once:
    """Closes a stream and lets its hold and gauge go, once, whichever end comes first."""

    def __init__(self, stream: EventStream, release: contextlib.ExitStack, dec: Callable[[], None]) -> None:
        self._stream, self._release, self._dec = stream, release, dec
        self._done = False

    def __call__(self) -> None:
        if not self._done:
            self._done = True
            self._stream.close()
            self._release.close()
            self._dec()

    async def after_disconnect(self, message: Any) -> None:
        self()
