"""The asynchronous calls' hot path as plain ASGI (issue 11): an application's route declared
with :func:`~tarefa.http.asynccall.asynchronous`, whose endpoint takes a JSON body and an
``AsyncCall``, is called without FastAPI's request handling (body reading, dependency solving,
the exit stacks, the response classes) when the request is plainly well formed.

Such a route stays an ``APIRoute`` (the OpenAPI document, and the answer to every request the
fast path does not take). At the app's start, :func:`install_async_paths` puts a
:class:`~tarefa.http.fastpath.FastRoute` of the same path and method in front of each route it
can take: an ``async def`` endpoint annotated to return a ``Response``, whose parameters are
one body (not embedded, not a form) and the ``AsyncCall``, with no other dependency, no path,
query, header or cookie parameter, no body size limit of FastAPI's own (the app's or the route's),
and no dependency overrides. A request with a JSON body
(``Content-Type: application/json``) that validates is answered here, exactly as the route
would: :func:`~tarefa.http.asynccall._async_call` (401, a malformed ``return_timeout`` or
``Callback-URL``, an idempotent replay), then the endpoint. Any other request (no body, another
content type, malformed JSON, a body that does not validate) goes on to the route, with its
body, whose validation and error bodies are the contract.
"""

from __future__ import annotations

import inspect
import typing
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import params
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .asynccall import _async_call
from .fastpath import FastRoute

if TYPE_CHECKING:
    from fastapi import FastAPI

_JSON_TYPES = (b"application/json",)


class _AsyncEndpoint:
    """The fast handler of one asynchronous route."""

    def __init__(self, app: FastAPI, route: APIRoute, body_field: Any, starter_name: str) -> None:
        self.app = app
        self.endpoint: Any = route.dependant.call
        self.body_field = body_field
        self.body_name: str = body_field.name
        self.starter_name = starter_name
        self.status_code = route.status_code or 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send, route_app: ASGIApp) -> None:
        if not _json_content(scope) or self.app.dependency_overrides or MAX_BODY_SIZE_SCOPE_KEY in scope:
            return await route_app(scope, receive, send)
        body = await _read_body(receive)
        replay = _Replay(body, receive)
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            data = None
        if data is None:  # no body, or one orjson does not read: the route words the answer
            return await route_app(scope, replay.receive, send)
        value, errors = self.body_field.validate(data, {}, loc=("body",))
        if errors:
            return await route_app(scope, replay.receive, send)
        request = Request(scope, replay.receive)
        request._body = body  # for the Idempotency-Key's fingerprint
        starter = await _async_call(request)
        response = await self.endpoint(**{self.body_name: value, self.starter_name: starter})
        if not isinstance(response, Response):  # despite its annotation: as FastAPI would answer it
            response = JSONResponse(jsonable_encoder(response), self.status_code)
        await response(scope, replay.receive, send)


class _Replay:
    """``receive`` that gives the body read already, then the connection's next messages."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def receive(self) -> Message:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        return await self._receive()


def _json_content(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.lower() in _JSON_TYPES
    return False


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # a disconnect: the route's own reading ends it too
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _fast_endpoint(app: FastAPI, route: APIRoute) -> _AsyncEndpoint | None:
    """The fast handler of ``route``, or None when the route is not one it can take (module doc)."""
    if not (route.openapi_extra or {}).get("x-tarefa-asynchronous") or route.response_field is not None:
        return None
    if getattr(route, "max_body_size", None) is not None:  # FastAPI's own limit words its 413
        return None
    dependant = route.dependant
    call = dependant.call
    if call is None or not inspect.iscoroutinefunction(call):
        return None
    if any(
        (
            dependant.path_params,
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.request_param_name,
            dependant.websocket_param_name,
            dependant.http_connection_param_name,
            dependant.response_param_name,
            dependant.background_tasks_param_name,
            dependant.security_scopes_param_name,
        )
    ):
        return None
    if len(dependant.body_params) != 1 or route.body_field is None or getattr(route, "_embed_body_fields", False):
        return None
    field = dependant.body_params[0]
    if isinstance(field.field_info, params.Form) or getattr(field.field_info, "embed", False):
        return None
    if any(sub.call is not _async_call for sub in dependant.dependencies):
        return None
    names = [sub.name for sub in dependant.dependencies if sub.name is not None]
    if len(names) != 1:
        return None
    try:
        returns = typing.get_type_hints(call).get("return")
    except Exception:  # an annotation that does not resolve: leave the route to FastAPI
        return None
    if not (inspect.isclass(returns) and issubclass(returns, Response)):
        return None
    return _AsyncEndpoint(app, route, field, names[0])


def install_async_paths(app: FastAPI) -> int:
    """Put a fast route in front of each asynchronous route of ``app`` it can take; how many."""
    app.router.routes[:] = [r for r in app.router.routes if not _is_ours(r)]  # a second start
    fast: list[FastRoute] = []
    for route in app.router.routes:
        if isinstance(route, APIRoute) and (handler := _fast_endpoint(app, route)) is not None:
            fast += [FastRoute(route.path, method, handler, app.router) for method in sorted(route.methods or ())]
    app.router.routes[0:0] = fast
    return len(fast)


def _is_ours(route: Any) -> bool:
    return isinstance(route, FastRoute) and isinstance(route.fast, _AsyncEndpoint)
