"""The job routes' hot path as plain ASGI: a well-formed request skips FastAPI's dependency
solving, parameter validation and response classes (issue 11: they were a third of the server's
CPU per request), and anything else is handed to the FastAPI route as it was.

Each job route stays an ``APIRoute`` (the OpenAPI document, and the answer to every request the
fast path does not take); :func:`install_fast_paths` puts a :class:`FastRoute` of the same path
and method in front of it, inside every middleware and exception handler of the app. It answers
the requests it can answer exactly as the route would (known parameters, each once, in the
documented form) and passes every other one (a malformed parameter, a repeated one) on to the
route, whose validation and error bodies are the contract. Errors raised here
(:class:`~tarefa.http.errors.ApiError`, a store fault) go to the app's exception handlers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.routing import BaseRoute, Match, NoMatchFound, compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from ..jobs import ANYONE, JobNotFound, Viewer
from ..model import Job
from ..store import JobAlreadyTerminal, JobNotTerminal
from .access import viewer_of
from .errors import REQUEST_ID_HEADER, ApiError
from .params import parse_baseline, parse_fields, query_pairs
from .routes import _refusal, _translated
from .wire import etag, job_to_wire

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .mount import Tarefa

_POLL_TIMEOUT = re.compile(r"[0-9]{1,3}", re.ASCII)
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")
FastHandler = Callable[[Scope, Receive, Send, ASGIApp], Coroutine[Any, Any, None]]


def _query(scope: Scope, known: frozenset[str]) -> dict[str, str] | None:
    """The known parameters of the query (decoded as Starlette does); None when one is repeated."""
    if not scope.get("query_string"):
        return {}
    found: dict[str, str] = {}
    for name, value in query_pairs(scope):
        if name in known:
            if name in found:
                return None
            found[name] = value
    return found


def _request_id(scope: Scope) -> bytes:
    return str(scope.get("state", {}).get("request_id", "")).encode()


async def _send_json(send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]]) -> None:
    data = orjson.dumps(body)
    head = [(b"content-length", str(len(data)).encode()), _JSON, *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


def _job_headers(job: Any, retry_after: int | None) -> list[tuple[bytes, bytes]]:
    headers = [_NO_STORE, (b"etag", etag(job).encode())]
    if retry_after is not None and not job.is_terminal:
        headers.append((b"retry-after", str(retry_after).encode()))
    return headers


def read_params(scope: Scope) -> tuple[int | None, datetime | None, frozenset[str] | None] | None:
    """``GET /jobs/{id}``'s parameters (poll timeout, baseline, fields) in their documented form;
    None for anything else (a malformed or repeated one): the route's validation answers it."""
    params = _query(scope, frozenset({"poll_timeout", "last_modified", "fields"}))
    if params is None:
        return None
    timeout_text = params.get("poll_timeout")
    poll_timeout = None
    if timeout_text is not None:
        if not _POLL_TIMEOUT.fullmatch(timeout_text) or not 1 <= int(timeout_text) <= 120:
            return None
        poll_timeout = int(timeout_text)
    try:
        return poll_timeout, parse_baseline(params.get("last_modified")), parse_fields(params.get("fields"))
    except ApiError:
        return None


async def send_read(send: Send, engine: Tarefa, job: Job, viewer: Viewer, selected: frozenset[str] | None,
                    retry_after: int | None) -> None:  # fmt: skip
    """The answer of ``GET /jobs/{id}`` (``retry_after``: a plain read's ``Retry-After``)."""
    await send_rendered(send, render_read(engine, job, viewer.shows_owners, selected, retry_after))


Rendered = tuple[list[tuple[bytes, bytes]], bytes]


def render_read(engine: Tarefa, job: Job, admin: bool, selected: frozenset[str] | None,
                retry_after: int | None) -> Rendered:  # fmt: skip
    """The headers and body of ``GET /jobs/{id}``'s answer (see :func:`send_read`)."""
    data = orjson.dumps({"record": job_to_wire(job, engine.jobs_href, selected, admin=admin)})
    return [(b"content-length", str(len(data)).encode()), _JSON, *_job_headers(job, retry_after)], data


async def send_rendered(send: Send, rendered: Rendered) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": list(rendered[0])})
    await send({"type": "http.response.body", "body": rendered[1]})


class JobFastPaths:
    """The fast handlers of one mounted :class:`~tarefa.Tarefa`'s job routes."""

    def __init__(self, engine: Tarefa) -> None:
        self.engine = engine

    async def _viewer(self, scope: Scope, receive: Receive) -> Viewer:
        if self.engine.identity is None:
            return ANYONE
        return await viewer_of(Request(scope, receive))

    async def get_job(self, scope: Scope, receive: Receive, send: Send, route_app: ASGIApp) -> None:
        """``GET /jobs/{id}``: a standard read or a long poll."""
        read = read_params(scope)
        if read is None:  # the route's own validation words the answer
            return await route_app(scope, receive, send)
        poll_timeout, baseline, selected = read
        del read  # parsed: not held while a long poll waits
        engine = self.engine
        viewer = await self._viewer(scope, receive)
        job_id: str = scope["path_params"]["job_id"]
        try:  # no context manager objects held while a long poll waits (issue 11, W5)
            if poll_timeout is None:
                job = await engine.jobs.get(viewer, job_id)
            else:
                user = None if viewer is ANYONE else viewer.name
                engine.waiting_limit.enter(user)
                try:
                    job = await engine.jobs.wait_for_change(viewer, job_id, baseline=baseline, timeout=poll_timeout)
                finally:
                    engine.waiting_limit.leave(user)
        except (JobNotFound, JobAlreadyTerminal, JobNotTerminal) as exc:
            raise _refusal(job_id, exc) from None
        retry_after = engine.retry_after if poll_timeout is None else None
        await send_read(send, engine, job, viewer, selected, retry_after)

    async def cancel_job(self, scope: Scope, receive: Receive, send: Send, route_app: ASGIApp) -> None:
        """``PATCH /jobs/{id}?action=cancel``."""
        params = _query(scope, frozenset({"action"}))
        if params is None or params.get("action") != "cancel":
            return await route_app(scope, receive, send)
        engine = self.engine
        viewer = await self._viewer(scope, receive)
        job_id: str = scope["path_params"]["job_id"]
        with _translated(job_id):
            job = await engine.jobs.cancel(viewer, job_id)
        body = {"job": job_to_wire(job, engine.jobs_href, admin=viewer.shows_owners)}
        await _send_json(send, 202, body, _job_headers(job, None))

    async def delete_job(self, scope: Scope, receive: Receive, send: Send, route_app: ASGIApp) -> None:
        """``DELETE /jobs/{id}``."""
        viewer = await self._viewer(scope, receive)
        job_id: str = scope["path_params"]["job_id"]
        with _translated(job_id):
            await self.engine.jobs.delete(viewer, job_id)
        headers = [(REQUEST_ID_HEADER.encode(), _request_id(scope))]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


#: Set in the scope of a request a fast route declined: the router passes it on to the route behind.
DECLINED = "tarefa.fast_path_declined"


class FastRoute(BaseRoute):
    """A route in front of a job route: same path and method, a fast handler; a request the
    handler declines goes through the app's router again, past this route, to the job route."""

    include_in_schema = False

    def __init__(self, path: str, method: str, fast: FastHandler, router: ASGIApp) -> None:
        self.path = path
        self.methods = {method}
        self.fast = fast
        self.router = router
        self._declined = self._decline  # bound once, not per request
        self.path_regex, self.path_format, self.param_convertors = compile_path(path)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] not in self.methods or scope.get(DECLINED):
            return Match.NONE, {}
        found = self.path_regex.match(scope.get("route_path") or get_route_path(scope))
        if found is None:
            return Match.NONE, {}
        params = {key: self.param_convertors[key].convert(value) for key, value in found.groupdict().items()}
        return Match.FULL, {"path_params": {**scope.get("path_params", {}), **params}}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    def handle(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        # The handler's coroutine itself, awaited by the router: no frame of this route stays on
        # the stack of a held long poll (issue 11, W5).
        return self.fast(scope, receive, send, self._declined)

    async def _decline(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[DECLINED] = True
        await self.router(scope, receive, send)


def install_fast_paths(app: FastAPI, engine: Tarefa) -> None:
    """Put the fast routes of ``GET``, ``PATCH`` and ``DELETE /jobs/{id}`` in front of ``app``'s routes."""
    paths = JobFastPaths(engine)
    item = f"{engine.jobs_href}/{{job_id}}"
    routes = [
        FastRoute(item, "GET", paths.get_job, app.router),
        FastRoute(item, "PATCH", paths.cancel_job, app.router),
        FastRoute(item, "DELETE", paths.delete_job, app.router),
    ]
    app.router.routes[0:0] = routes
