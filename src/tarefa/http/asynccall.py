"""Asynchronous endpoints (SPEC §2): the 202 helper.

In an application::

    @app.post("/api/hosts", **asynchronous())
    async def register_host(body: HostIn, call: AsyncCall) -> Response:
        ...  # validate: raise ApiError(409, ...) to refuse before any job exists
        return await call.start("host.register", body, resource=f"/api/hosts/{body.name}")

``asynchronous()`` documents the 202/200 answers in the OpenAPI schema, and the parameters
``return_timeout`` and ``Idempotency-Key``, which ``AsyncCall`` reads (itself, not through
FastAPI's parameter solving) before it starts the job.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import Depends, Request
from starlette.responses import Response

from ..callbacks import MAX_URL_LENGTH
from ..jobs import Viewer
from ..model import Job
from ..store import Idempotency, IdempotencyMismatch, Precondition, ResourceBusy, StoreError
from ..store.outbox import EVENTS
from ..values import UnstorableValue
from .access import viewer_of
from .callbacks import CALLBACK_EVENTS, CALLBACK_URL, CALLBACK_URL_FORM, callback_of
from .errors import ApiError
from .params import IDEMPOTENCY_KEY, IDEMPOTENCY_KEY_FORM, ascii_integer, idempotency_key_from, invalid, query_pairs
from .wire import ErrorBody, JobEnvelope, etag, job_to_wire

if TYPE_CHECKING:
    from .mount import Tarefa

log = logging.getLogger("tarefa.http")


class JobStarter:
    """Starts the job of one asynchronous request; get it by annotating a parameter ``AsyncCall``."""

    def __init__(
        self,
        engine: Tarefa,
        viewer: Viewer,
        return_timeout: int,
        idempotency: Idempotency | None,
        callback: dict[str, str] | None = None,
    ) -> None:
        self.engine = engine
        self.viewer = viewer
        self.return_timeout = return_timeout
        self.idempotency = idempotency
        self.callback = callback

    async def start(
        self,
        operation: str,
        input: Any = None,
        *,
        resource: str | None = None,
        resource_key: str | None = None,
        precondition: Precondition | None = None,
    ) -> Response:
        """Store a queued job durably, then answer 202 (or 200 if it ends within return_timeout).

        ``resource`` is the href of what the job creates or changes; ``resource_key`` makes the
        call a 409 while another job on the same key is queued or running; ``precondition``
        checks an application document in the same transaction as the job's insert (raise an
        :class:`ApiError` from its check to refuse the call), so a check-then-act cannot race.
        With the store's queue full, a 503 and no job.
        """
        await self.engine.queue_limit.check()
        try:
            created = await self.engine.jobs.start(
                self.viewer,
                operation,
                input,
                resource=resource,
                resource_key=resource_key,
                idempotency=self.idempotency,
                precondition=precondition,
                callback=self.callback,
                answer_timeout=self.return_timeout,
            )
        except ResourceBusy as exc:
            raise _busy(exc, self.engine.jobs_href) from None
        except UnstorableValue as exc:
            raise _unstorable(exc) from None
        except IdempotencyMismatch as exc:
            raise _mismatch(exc) from None
        job, status = created.job, created.answer_status
        if created.created:
            self.engine.queue_limit.added()
        if created.created and self.return_timeout > 0:
            job, status = await self._wait_for_end(job, created.answer_by)
        return accepted_response(self.engine, job, status, admin=self.viewer.shows_owners)

    async def _wait_for_end(self, job: Job, answer_by: datetime | None) -> tuple[Job, int]:
        """``return_timeout``: 200 with the ended job, or 202. The job exists by now, so a store
        fault while waiting still answers 202 with it: the client must learn its id."""
        try:
            return await self.engine.jobs.wait_for_answer(
                self.viewer, job, self.return_timeout, idempotent=self.idempotency is not None, answer_by=answer_by
            )
        except StoreError as exc:
            log.warning("job %s accepted; the store failed while waiting for its end: %s", job.id, exc)
            return job, 202


class _JobAnswer(Response):
    """A JSON answer whose headers are built as bytes at once (no ``init_headers`` per call)."""

    media_type = "application/json"

    def __init__(self, body: bytes, status: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status
        self.background = None
        self.body = body
        self.raw_headers = raw_headers


_NO_STORE = (b"cache-control", b"no-store")
_JSON = (b"content-type", b"application/json")


def accepted_response(engine: Tarefa, job: Job, status: int, *, admin: bool = False) -> Response:
    """``{"job": ...}`` with Location and Retry-After: the answer of an asynchronous call."""
    href = f"{engine.jobs_href}/{job.id}"
    body = orjson.dumps({"job": job_to_wire(job, engine.jobs_href, admin=admin)})
    headers = [_NO_STORE, (b"etag", etag(job).encode())]
    if engine.retry_after is not None and not job.is_terminal:
        headers.append((b"retry-after", str(engine.retry_after).encode()))
    headers += [(b"location", href.encode("latin-1")), (b"content-length", str(len(body)).encode()), _JSON]
    return _JobAnswer(body, status, headers)


class ReplayAnswer(Exception):
    """Answers a repeated Idempotency-Key at once, before the endpoint validates anything again."""

    def __init__(self, response: Response) -> None:
        super().__init__("idempotent replay")
        self.response = response


def _busy(exc: ResourceBusy, jobs_href: str) -> ApiError:
    """409: the holding job is named only when the caller may see it."""
    if not exc.job_id:
        return ApiError(409, "resource_busy", "another job is already working on this resource; try again later")
    link = {"id": exc.job_id, "_links": {"self": {"href": f"{jobs_href}/{exc.job_id}"}}}
    return ApiError(
        409,
        "resource_busy",
        f"job {exc.job_id} is already working on this resource; wait for it to end",
        details={"job": link},
    )


def _unstorable(exc: UnstorableValue) -> ApiError:
    """400: the request validated, but a part of it cannot be stored (the same on every store)."""
    code = "invalid_parameter" if exc.path == "Idempotency-Key" else "invalid_body"
    return ApiError(400, code, f"{exc.path or 'the body'} {exc.reason}", target=exc.path or "body")


def _mismatch(exc: IdempotencyMismatch) -> ApiError:
    return ApiError(
        422,
        "idempotency_key_reused",
        f"Idempotency-Key {exc.key!r} was used for a different request (job {exc.job_id}); use a new key",
        target="Idempotency-Key",
    )


async def _fingerprint(request: Request, key: str) -> Idempotency:
    """The request's fingerprint: method, path, sorted query (but ``return_timeout``) and body.
    Stored with the key, so it never changes: read from the scope as ``request.url.path`` and
    ``request.query_params`` give them (without building those objects on the hot path)."""
    scope = request.scope
    path: str = scope["path"]
    if "?" in path or "#" in path or "\\" in path:  # escaped by Starlette's URL
        path = request.url.path
    query = sorted((k, v) for k, v in query_pairs(scope) if k != "return_timeout")
    digest = hashlib.sha256(f"{scope['method']} {path}\n".encode())
    digest.update(repr(query).encode())
    digest.update(await request.body())
    return Idempotency(key, digest.hexdigest())


async def _async_call(request: Request) -> JobStarter:
    """The :class:`JobStarter` of a request. Its parameters are read here, not declared to
    FastAPI (solving them cost a sixth of a call's CPU): :func:`asynchronous` documents them."""
    engine = getattr(request.app.state, "tarefa", None)
    if engine is None:
        raise RuntimeError("AsyncCall used in an app where no Tarefa is mounted: call tarefa.mount(app)")
    viewer = await viewer_of(request)
    return_timeout = return_timeout_from(request)
    sent = {name.lower() for name, _ in request.scope["headers"]}  # most calls send none of the three
    idempotency_key = idempotency_key_from(request) if _IDEMPOTENCY_NAME in sent else None
    callback = await callback_of(request, engine.callback_settings) if not _CALLBACK_NAMES.isdisjoint(sent) else None
    if idempotency_key is None:
        return JobStarter(engine, viewer, return_timeout, None, callback)
    idempotency = await _fingerprint(request, idempotency_key)
    try:
        replay = await engine.jobs.replay(viewer, idempotency)
    except IdempotencyMismatch as exc:
        raise _mismatch(exc) from None
    if replay is not None:
        raise ReplayAnswer(accepted_response(engine, replay.job, replay.answer_status, admin=viewer.shows_owners))
    return JobStarter(engine, viewer, return_timeout, idempotency, callback)


_IDEMPOTENCY_NAME = IDEMPOTENCY_KEY.lower().encode()
_CALLBACK_NAMES = frozenset(name.lower().encode() for name in (CALLBACK_URL, CALLBACK_EVENTS))
MAX_RETURN_TIMEOUT = 120
_RETURN_TIMEOUT_DOC = "Wait up to this many seconds for the job to end (200 if it does)"
_IDEMPOTENCY_KEY_DOC = (
    "Repeat a request safely: the same key returns the same job (1 to 255 printable characters, UTF-8; send it once)"
)
_CALLBACK_URL_DOC = (
    "POST the job's end (every event with Callback-Events: all) to this http(s) URL, signed as Standard Webhooks "
    "says (docs/callbacks.md). Its host must resolve to public addresses (or to networks the server allows), and "
    "the server must have a signing secret: else 400"
)
_CALLBACK_EVENTS_DOC = "all: every event; terminal (the default): the job's end only"
#: The parameters of every asynchronous call, as the OpenAPI document shows them.
PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "return_timeout",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "maximum": MAX_RETURN_TIMEOUT, "minimum": 0, "default": 0,
                   "description": _RETURN_TIMEOUT_DOC, "title": "Return Timeout"},
        "description": _RETURN_TIMEOUT_DOC,
    },
    {
        "name": IDEMPOTENCY_KEY,
        "in": "header",
        "required": False,
        "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": _IDEMPOTENCY_KEY_DOC,
                   "pattern": IDEMPOTENCY_KEY_FORM, "title": IDEMPOTENCY_KEY},
        "description": _IDEMPOTENCY_KEY_DOC,
    },
    {
        "name": CALLBACK_URL,
        "in": "header",
        "required": False,
        "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": _CALLBACK_URL_DOC,
                   "pattern": CALLBACK_URL_FORM, "maxLength": MAX_URL_LENGTH, "title": CALLBACK_URL},
        "description": _CALLBACK_URL_DOC,
    },
    {
        "name": CALLBACK_EVENTS,
        "in": "header",
        "required": False,
        "schema": {"anyOf": [{"type": "string", "enum": list(EVENTS)}, {"type": "null"}],
                   "description": _CALLBACK_EVENTS_DOC, "title": CALLBACK_EVENTS},
        "description": _CALLBACK_EVENTS_DOC,
    },
]  # fmt: skip


def return_timeout_from(request: Request) -> int:
    """``return_timeout`` (0..120 s, plain ASCII digits; the last one if repeated), 0 if absent."""
    raw: bytes = request.scope.get("query_string", b"")
    if b"return_timeout" not in raw:
        return 0
    values = [v for k, v in query_pairs(request.scope) if k == "return_timeout"]
    if not values:
        return 0
    try:
        ascii_integer(values[-1])
    except ValueError as exc:
        raise invalid("return_timeout", f"query parameter 'return_timeout': Value error, {exc}") from None
    if int(values[-1]) > MAX_RETURN_TIMEOUT:
        message = f"query parameter 'return_timeout': Input should be less than or equal to {MAX_RETURN_TIMEOUT}"
        raise invalid("return_timeout", message)
    return int(values[-1])


#: The request's JobStarter. Every asynchronous route depends on it (a 401 or a malformed
#: parameter comes before the body's validation), and FastAPI's cache hands the same one to the
#: ``AsyncCall`` parameter: one dependency solved per call, not a viewer's and then this one.
_STARTER = Depends(_async_call)
#: Annotate an endpoint parameter with this to start a job from it (see module doc).
AsyncCall = Annotated[JobStarter, _STARTER]

_LOCATION = {"description": "The job: /api/jobs/<id>", "schema": {"type": "string"}}
_RETRY_AFTER = {"description": "Seconds to wait before polling", "schema": {"type": "integer"}}


def asynchronous(**route_options: Any) -> dict[str, Any]:
    """Route options that document an asynchronous endpoint: ``@app.post(path, **asynchronous())``."""
    responses: dict[int | str, dict[str, Any]] = {
        202: {
            "model": JobEnvelope,
            "description": "Accepted: the job is queued. Follow it at Location (long poll with poll_timeout).",
            "headers": {"Location": _LOCATION, "Retry-After": _RETRY_AFTER},
        },
        200: {"model": JobEnvelope, "description": "The job ended within return_timeout"},
        400: {"model": ErrorBody, "description": "A malformed parameter, or a Callback-URL that is refused"},
        409: {"model": ErrorBody, "description": "Another job is working on the same resource"},
        422: {"model": ErrorBody, "description": "The Idempotency-Key was used for a different request"},
        503: {"model": ErrorBody, "description": "Too many jobs are queued (or the store is unavailable)"},
        **route_options.pop("responses", {}),
    }
    return {
        "status_code": 202,
        "response_model": None,
        "responses": responses,
        "openapi_extra": {"x-tarefa-asynchronous": True, "parameters": copy.deepcopy(PARAMETERS)},
        "dependencies": [_STARTER, *route_options.pop("dependencies", [])],
        **route_options,
    }
