"""Long polls parked without a task (issue 11, W5): ``GET {prefix}/jobs/{id}?poll_timeout=..``
answered by the server's protocol (:mod:`tarefa.http.protocol`) without keeping a task, the
FastAPI app and its middleware alive for the whole wait.

A held long poll through the app costs its task, uvicorn's ``run_asgi`` and a coroutine frame per
layer (Starlette's middleware, ``RequestIdMiddleware``, the router, the fast route, the wait): about
half of its memory. :class:`HeldPolls` does what those layers do for this one request, in their
order, and parks the wait on the change hub (:meth:`~tarefa.waiting.ChangeHub.hold`); the answer
is written, when the wait ends, by a short task through uvicorn's request cycle as any other.

Only where nothing an application added would be skipped: :meth:`HeldPolls.of` takes an app
whose middleware is exactly tarefa's own (``tarefa serve``'s, and any app that adds none) and
serves it with no proxy headers; each request is taken only if no route in front of the fast
route matches it, it has no body, and its parameters are in the documented form. Anything else
goes through the app as before. What the layers do is done here as they do it:

- :class:`~tarefa.http.limits.BodyLimitMiddleware`: a URL with a control character, or a body
  (declared or chunked), goes through the app;
- ``RequestIdMiddleware``: the request id (the client's if sane), the ``request-id`` header on the
  answer, and an unexpected fault answered ``500 internal_error`` and logged with the id;
- Starlette's exception middleware: a refusal (``ApiError``, ``StoreUnavailable``, ...) answered
  by the app's own handler for it, as registered;
- FastAPI: its own OpenTelemetry, once configured, sends every request through the app;
- the router and the fast route: ``scope["app"]``, ``["router"]``, ``["route"]`` and the path
  parameters set before the app's ``identity`` sees the request; then the fast route's own code
  (:func:`~tarefa.http.fastpath.read_params`, the per-user limit, :func:`~tarefa.http.fastpath.send_read`).

Asynchronous calls (issue 11, W2) are taken the same way, for their CPU: a ``POST`` whose first
matching route is an asynchronous route's fast route (:mod:`tarefa.http.asyncpath`), with a
declared ``Content-Length`` within the server's body limit (a chunked body, or none, goes through
the app), when the app has no ``max_body_size`` of FastAPI's own. :meth:`HeldPolls.direct` gives
uvicorn's request cycle an ASGI app that does the layers' work above and runs the fast route's
handler; a request the handler declines (another content type, a body that does not validate)
goes on through every layer of the app to the route, with its body, as it does when served
through the app.

A client that goes away while its poll is parked ends the wait (and frees its place under the
per-user limit) at once; graceful shutdown answers parked polls as it answers the others (the
hub's ``close`` wakes them).
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from ..jobs import ANYONE, JobNotFound, Viewer
from ..logs import request_id_var
from ..model import Job
from ..waiting import HeldWait
from .access import viewer_of
from .asyncpath import _AsyncEndpoint
from .errors import ApiError, RequestIdMiddleware, _SendWithId, ensure_request_id, send_error
from .fastpath import DECLINED, FastRoute, JobFastPaths, Rendered, read_params, render_read, send_rendered
from .limits import DEFAULT_MAX_BODY, _body_framing, _control_character_in
from .routes import _refusal

if TYPE_CHECKING:
    from .mount import Tarefa
    from .protocol import TimedHttpProtocol

log = logging.getLogger("tarefa.http")


class HeldPolls:
    """Long polls of one app's mounted :class:`~tarefa.Tarefa`, parked by the server's protocol."""

    def __init__(self, app: FastAPI, engine: Tarefa, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.engine = engine
        self.prefix = f"{engine.jobs_href}/"
        #: The body limit of the :class:`~tarefa.http.limits.BodyLimitMiddleware` the app is served in.
        self.max_body = max_body
        # FastAPI's own body limit (the app's ``max_body_size``) words its 413 in its layers.
        self._calls = getattr(app, "max_body_size", None) is None
        self._last: tuple[Job, bool, frozenset[str] | None, Rendered] | None = None

    @classmethod
    def of(cls, app: Any, max_body: int = DEFAULT_MAX_BODY) -> HeldPolls | None:
        """For ``app`` if its middleware is exactly tarefa's own (module doc), else None;
        ``max_body``: the limit of the :class:`~tarefa.http.limits.BodyLimitMiddleware` around it."""
        from .mount import Tarefa

        engine = getattr(getattr(app, "state", None), "tarefa", None)
        if not isinstance(app, FastAPI) or not isinstance(engine, Tarefa) or not hasattr(engine, "jobs_href"):
            return None
        middleware = app.user_middleware
        if len(middleware) != 1 or middleware[0].cls is not RequestIdMiddleware or app.root_path:  # type: ignore[comparison-overlap]
            return None
        if middleware[0].args or middleware[0].kwargs:
            return None
        kind = type(app)
        if kind.__call__ is not FastAPI.__call__ or kind.build_middleware_stack is not FastAPI.build_middleware_stack:
            return None  # an app that serves its requests its own way
        return cls(app, engine, max_body)

    def _telemetry_on(self, scope: Scope) -> bool:
        """FastAPI's own OpenTelemetry (a span per request once a provider is configured)."""
        telemetry = getattr(self.app, "_native_telemetry", None)
        return "fastapi.telemetry" in scope or (telemetry is not None and bool(telemetry.enabled()))

    def takes(self, scope: Scope) -> bool:
        """A first look (the rest is checked by :meth:`start`): a GET that may be a long poll."""
        return (
            scope["method"] == "GET"
            and b"poll_timeout" in scope["query_string"]
            and scope["path"].startswith(self.prefix)
        )

    def _fast_route(self, scope: Scope) -> tuple[FastRoute, Scope] | None:
        """The fast route the app's router would hand this request to, and its child scope."""
        for route in self.app.router.routes:
            match, child = route.matches(scope)
            if isinstance(route, FastRoute) and match is Match.FULL:
                return route, child
            if match is not Match.NONE:
                return None
        return None

    def _route(self, scope: Scope) -> tuple[FastRoute, Scope] | None:
        """The long polls' fast route, if the app's router would hand this request to it."""
        found = self._fast_route(scope)
        if found is None:
            return None
        fast: Any = found[0].fast
        mine = getattr(fast, "__func__", None) is JobFastPaths.get_job and fast.__self__.engine is self.engine
        return found if mine else None

    def direct(self, scope: Scope, app: ASGIApp) -> ASGIApp | None:
        """For an asynchronous call (``POST`` to a route of :mod:`~tarefa.http.asyncpath`) with a
        body of a declared length within the limit: the ASGI app that answers it without the
        app's middleware stack (module doc); ``app`` (the app as served) takes what it declines.
        None for any other request."""
        if scope["method"] != "POST" or not self._calls:
            return None
        declared, framed = _body_framing(scope)
        if framed or declared is None or not 0 <= declared <= self.max_body:
            return None
        if _control_character_in(scope) is not None or self._telemetry_on(scope):
            return None
        found = self._fast_route(scope)
        if found is None or not isinstance(found[0].fast, _AsyncEndpoint) or found[0].fast.app is not self.app:
            return None
        return functools.partial(self._call, app, *found)

    def _enter(self, scope: Scope, route: FastRoute, child: Scope) -> str:
        """What the layers set before the fast route runs (module doc): the request id (returned),
        ``scope["app"]``, ``["router"]``, ``["route"]`` and the path parameters."""
        rid = ensure_request_id(scope)
        request_id_var.set(rid)
        scope["app"] = self.app
        scope.setdefault("router", self.app.router)
        scope["route"] = route
        scope.update(child)
        return rid

    async def _call(self, app: ASGIApp, route: FastRoute, child: Scope, scope: Scope, receive: Receive,
                    send: Send) -> None:  # fmt: skip
        """An asynchronous call, as the app's layers would take it to its fast route."""
        rid = self._enter(scope, route, child)
        sender = _SendWithId(send, rid)
        try:
            await route.fast(scope, receive, sender, functools.partial(_through, app))
        except Exception as exc:
            await self._handle(exc, rid, scope, receive, sender)

    async def start(self, protocol: TimedHttpProtocol, cycle: Any, app: Any) -> None:
        """The request's task: answer it, park it, or hand it to ``app`` (uvicorn's ``run_asgi``)."""
        scope = cycle.scope
        found = None
        read = None
        if (
            _control_character_in(scope) is None
            and _body_framing(scope) == (None, False)
            and not self._telemetry_on(scope)
        ):
            found = self._route(scope)
            read = read_params(scope) if found is not None else None
        if found is None or read is None or read[0] is None:
            await cycle.run_asgi(app)
            return
        route, child = found
        poll_timeout: int = read[0]
        baseline, selected = read[1], read[2]
        del found, read
        rid = self._enter(scope, route, child)
        engine = self.engine
        job_id: str = scope["path_params"]["job_id"]
        answer: _Answer | None = None
        try:
            viewer = ANYONE if engine.identity is None else await viewer_of(Request(scope, cycle.receive))
            user = None if viewer is ANYONE else viewer.name
            engine.waiting_limit.enter(user)
            answer = _Answer(self, protocol, cycle, rid, viewer, user, selected)
            outcome = await engine.jobs.hold_for_change(
                viewer, job_id, baseline=baseline, timeout=poll_timeout, done=answer.done
            )
        except BaseException as exc:
            if answer is not None:
                engine.waiting_limit.leave(answer.user)
            if not isinstance(exc, Exception):  # cancelled (a forced stop): nothing to answer
                raise
            refusal = _refusal(job_id, exc) if isinstance(exc, JobNotFound) else exc
            await cycle.run_asgi(functools.partial(self.respond, refusal, rid, None, None))
            return
        if isinstance(outcome, HeldWait):
            answer.held = outcome
            if cycle.disconnected:  # gone while its job was read
                answer.cancel()
            else:
                protocol.parked = answer
            return
        engine.waiting_limit.leave(user)
        await cycle.run_asgi(functools.partial(self.respond, outcome, rid, viewer, selected))

    async def respond(self, outcome: Job | Exception, rid: str, viewer: Viewer | None,
                      selected: frozenset[str] | None, scope: Scope, receive: Receive, send: Send) -> None:  # fmt: skip
        """The answer, as an ASGI app for the cycle's ``run_asgi``: the job, or the app's answer
        to the exception (its handler's, or ``RequestIdMiddleware``'s 500)."""
        request_id_var.set(rid)
        sender = _SendWithId(send, rid)
        try:
            if isinstance(outcome, Exception):
                raise outcome
            assert viewer is not None
            await send_rendered(sender, self._render(outcome, viewer.shows_owners, selected))
        except Exception as exc:
            await self._handle(exc, rid, scope, receive, sender)

    async def _handle(self, exc: Exception, rid: str, scope: Scope, receive: Receive, sender: _SendWithId) -> None:
        handler = self._handler(exc)
        if handler is not None and not sender.started:
            try:
                response = handler(Request(scope, receive, sender), exc)
                if inspect.isawaitable(response):
                    response = await response
                if response is not None:
                    await response(scope, receive, sender)
                return
            except Exception as fault:
                exc = fault
        log.error("request %s %s failed [request-id %s]", scope["method"], scope["path"], rid, exc_info=exc)
        if sender.started:
            raise exc
        message = f"the server failed unexpectedly; quote request-id {rid} to its operators"
        await send_error(sender, rid, ApiError(500, "internal_error", message))

    def _render(self, job: Job, admin: bool, selected: frozenset[str] | None) -> Rendered:
        """The answer for ``job``; the last one is kept: a change wakes every poll of its job in a
        row, and they answer the same bytes (10,000 polls on 100 jobs: 100 renderings, not 10,000)."""
        last = self._last
        if last is not None and last[0] is job and last[1] == admin and last[2] == selected:
            return last[3]
        rendered = render_read(self.engine, job, admin, selected, None)
        self._last = (job, admin, selected, rendered)
        return rendered

    def _handler(self, exc: Exception) -> Any:
        """The app's handler for ``exc``, looked up as Starlette's exception middleware does."""
        handlers = self.app.exception_handlers
        if isinstance(exc, HTTPException) and exc.status_code in handlers:
            return handlers[exc.status_code]
        for kind in type(exc).__mro__:
            if kind in handlers and kind is not Exception:
                return handlers[kind]
        return None


async def _through(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """A request the fast route declined: through ``app``'s layers to the route behind it."""
    scope[DECLINED] = True
    await app(scope, receive, send)


class _Answer:
    """A parked long poll's side of the connection: what its answer needs, and no more."""

    __slots__ = ("cycle", "held", "owner", "protocol", "rid", "selected", "user", "viewer")

    def __init__(self, owner: HeldPolls, protocol: TimedHttpProtocol, cycle: Any, rid: str, viewer: Viewer,
                 user: str | None, selected: frozenset[str] | None) -> None:  # fmt: skip
        self.owner = owner
        self.protocol = protocol
        self.cycle = cycle
        self.rid = rid
        self.viewer = viewer
        self.user = user
        self.selected = selected
        self.held: HeldWait | None = None

    def done(self, job: Job | None) -> None:
        """The wait is over (from the hub's callback): answer in a short task, as uvicorn would."""
        owner, protocol = self.owner, self.protocol
        if protocol.parked is self:
            protocol.parked = None
        self.held = None  # over: a later cancel() does nothing
        owner.engine.waiting_limit.leave(self.user)
        outcome: Job | Exception = job if job is not None else _refusal(self.cycle.scope["path_params"]["job_id"],
                                                                          JobNotFound(""))  # fmt: skip
        app = functools.partial(owner.respond, outcome, self.rid, self.viewer, self.selected)
        protocol.start_answer(self.cycle, app)

    def cancel(self) -> None:
        """The client went away: stop waiting, and free its place under the per-user limit."""
        if self.held is not None:
            self.held.cancel()
            self.held = None
            self.owner.engine.waiting_limit.leave(self.user)
