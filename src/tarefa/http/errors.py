"""Errors on the wire (SPEC §6) and the ``request-id`` header on every answer.

Every 4xx/5xx answer has the body ``{"error": {"code", "message", "target"}}``: our own
:class:`ApiError`, the framework's validation errors (400, not 422), unknown routes and methods,
and unexpected faults (500, logged with the request id, no stack trace to the client).
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import request_id_var
from ..store import StoreUnavailable

log = logging.getLogger("tarefa.http")

REQUEST_ID_HEADER = "request-id"
_STATUS_CODES = {
    400: "invalid_body",  # the framework's own 400s are body parse errors
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer: raise it from an endpoint to answer ``status`` with the SPEC error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        target: str | None = None,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.target = target
        self.headers = dict(headers or {})
        self.details = dict(details or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        error.update(self.details)
        return {"error": error}


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_response(request: Request, error: ApiError) -> Response:
    headers = {**error.headers, REQUEST_ID_HEADER: request_id(request), "Cache-Control": "no-store"}
    return Response(orjson.dumps(error.body()), error.status, headers, media_type="application/json")


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc)


def _location(loc: Sequence[Any]) -> tuple[str, str]:
    """(kind, target) from a pydantic error location such as ('query', 'poll_timeout')."""
    kind = str(loc[0]) if loc else "body"
    parts = [str(part) for part in loc[1:]]
    return kind, ".".join(parts) if parts else kind


def _unsupported_media_type(request: Request) -> ApiError:
    sent = request.headers.get("content-type")
    what = f"Content-Type {sent[:60]!r}" if sent else "no Content-Type"
    return ApiError(415, "unsupported_media_type", f"the body came with {what}: send JSON with Content-Type: "
                    "application/json", target="Content-Type")  # fmt: skip


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if isinstance(exc.body, bytes) and exc.body:  # a body the framework did not read as JSON
        return error_response(request, _unsupported_media_type(request))
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    kind, target = _location(first.get("loc", ()))
    code = "invalid_body" if kind == "body" else "invalid_parameter"
    where = "request body" if kind == "body" else f"{kind} parameter"
    message = f"{where} {target!r}: {first.get('msg', 'invalid value')}"
    if first.get("type") == "json_invalid":
        context = first.get("ctx")
        reason = context.get("error", "malformed") if isinstance(context, dict) else "malformed"
        target, message = "body", f"the request body is not valid JSON ({reason}); send a JSON object"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(request, ApiError(400, code, message, target=target))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = str(exc.detail)[:200]
    if exc.status_code == 400 and message == "There was an error parsing the body":
        message = "the request body could not be read as JSON text (UTF-8): send a JSON object"
    elif exc.status_code == 404 and message == "Not Found":
        message = f"there is no resource at {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return error_response(request, ApiError(exc.status_code, code, message, headers=headers))


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path (Starlette's ``Allow`` names only the first route's)."""
    scope = request.scope
    allowed = [
        method
        for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in request.app.router.routes)
    ]
    return ", ".join(allowed)


async def _on_store_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("request %s %s: store unavailable: %s", request.method, request.url.path, exc)
    message = (
        "the job store is unavailable right now; the request may not have been applied: "
        "repeat it shortly (with the same Idempotency-Key, for an asynchronous call)"
    )
    return error_response(request, ApiError(503, "store_unavailable", message, headers={"Retry-After": "1"}))


async def _on_replay(request: Request, exc: Exception) -> Response:
    response: Response = getattr(exc, "response")  # noqa: B009 - ReplayAnswer, imported lazily
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` with the SPEC error body."""
    from .asynccall import ReplayAnswer

    app.add_exception_handler(ReplayAnswer, _on_replay)
    app.add_exception_handler(StoreUnavailable, _on_store_unavailable)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
    # Unexpected faults are answered by RequestIdMiddleware, not by an ``Exception`` handler: Starlette
    # re-raises after such a handler, and the server then drops the keep-alive connection unannounced.


class RequestIdMiddleware:
    """Give every request an id (the client's ``request-id`` if sane) and echo it on the answer.

    It also answers an unexpected fault: ``500 internal_error`` with the SPEC body, logged with the
    request id; the connection stays usable (the fault is not raised on to the server).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ensure_request_id(scope)
        request_id_var.set(rid)  # not reset: the request's task ends with it (and its 500 line needs it)
        sender = _SendWithId(send, rid)
        try:
            await self.app(scope, receive, sender)
        except Exception as exc:
            log.error("request %s %s failed [request-id %s]", scope["method"], scope["path"], rid, exc_info=exc)
            if sender.started:
                raise  # the answer is half sent: only closing the connection can tell the client
            message = f"the server failed unexpectedly; quote request-id {rid} to its operators"
            await send_error(send, rid, ApiError(500, "internal_error", message))


_REQUEST_ID_NAME = REQUEST_ID_HEADER.encode()


class _SendWithId:
    """``send`` that adds the ``request-id`` header to the answer (unless the app set one), and
    remembers whether the answer has started. A small object rather than a closure and its cells:
    it is held for the whole of a long poll (issue 11, W5)."""

    __slots__ = ("_send", "rid", "started")

    def __init__(self, send: Send, rid: str) -> None:
        self._send = send
        self.rid = rid
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = list(message.get("headers", ()))
            if not any(name.lower() == _REQUEST_ID_NAME for name, _ in headers):
                message["headers"] = [*headers, (_REQUEST_ID_NAME, self.rid.encode())]
        await self._send(message)


async def send_error(send: Send, rid: str, error: ApiError, *, close: bool = False) -> None:
    """Answer ``error`` with the SPEC body from plain ASGI (outside the framework's handlers)."""
    body = orjson.dumps(error.body())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (REQUEST_ID_HEADER.encode(), rid.encode()),
        *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_PROCESS_PREFIX = secrets.token_hex(4)
_request_numbers = itertools.count(1)


def new_request_id() -> str:
    """Unique per process start and request (request ids need not be secret, so no urandom call)."""
    return f"{_PROCESS_PREFIX}{next(_request_numbers):08x}"


def ensure_request_id(scope: Scope) -> str:
    """The request's id: set once (the client's if sane, else a new one), kept by later callers."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = _incoming_id(scope) or new_request_id()
    return str(state["request_id"])


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"request-id" and 0 < len(value) <= 64 and value.isascii():
            text: str = value.decode()
            if text.replace("-", "").replace("_", "").isalnum():
                return text
    return None
