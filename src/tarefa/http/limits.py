"""Request limits: the body size (SPEC §7, ``413 request_too_large``) and no control characters in
the URL (``400 invalid_parameter``: no store can take a NUL, and no route means one), both with the
SPEC error body.

A pure ASGI middleware, enforced while the body is read: a declared ``Content-Length`` over the
limit is refused before the application runs (nothing of the body is read), and a body without
one (chunked) is cut off as soon as it passes the limit. Both answers say ``Connection: close``,
so the server does not go on reading the rest. (Starlette's ``RequestBodyLimitMiddleware`` lets
the application run first and answers in plain text, hence this one.)

    app.add_middleware(BodyLimitMiddleware, max_body=64 * 1024)
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, ensure_request_id, send_error

DEFAULT_MAX_BODY = 1024 * 1024  # 1 MiB
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class BodyTooLarge(Exception):
    """Raised from ``receive`` to stop an application that reads past the limit."""


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_body`` bytes with ``413``, and URLs (path or query, once
    percent-decoded) with a control character with ``400``."""

    def __init__(self, app: ASGIApp, max_body: int = DEFAULT_MAX_BODY) -> None:
        if max_body < 0:
            raise ValueError(f"max_body must be 0 or more bytes, not {max_body}")
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = _control_character_in(scope)
        if where is not None:
            message = f"the URL's {where} holds a control character (such as %00): no parameter takes one"
            await send_error(send, ensure_request_id(scope), ApiError(400, "invalid_parameter", message, target=where))
            return
        declared, framed = _body_framing(scope)
        if declared is not None and declared > self.max_body:
            await self._refuse(scope, send, f"the request body declares {declared} bytes")
            return
        if not framed and (declared is None or declared >= 0):
            # No body, or one whose declared length (which the server holds it to) is within the
            # limit: nothing to count, and no counting objects held while a long poll waits.
            await self.app(scope, receive, send)
            return
        reading = _LimitedBody(self.max_body, receive, send)
        try:
            await self.app(scope, reading.receive, reading.send)
        except Exception:
            if not reading.exceeded:
                raise
        if reading.exceeded and not reading.started:
            await self._refuse(scope, send, f"the request body passed {self.max_body} bytes")

    async def _refuse(self, scope: Scope, send: Send, what: str) -> None:
        message = f"{what}; this server takes at most {self.max_body} bytes"
        error = ApiError(413, "request_too_large", message, target="body")
        await send_error(send, ensure_request_id(scope), error, close=True)


class _LimitedBody:
    """``receive`` that counts, and ``send`` that holds back the application's answer once over."""

    def __init__(self, limit: int, receive: Receive, send: Send) -> None:
        self.limit = limit
        self.received = 0
        self.exceeded = False
        self.started = False
        self._receive = receive
        self._send = send

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                raise BodyTooLarge(f"request body over {self.limit} bytes")
        return message

    async def send(self, message: Message) -> None:
        if self.exceeded and not self.started:
            return  # the application's answer to a cut-off body; the 413 replaces it
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def _body_framing(scope: Scope) -> tuple[int | None, bool]:
    """The declared ``Content-Length`` (-1: one that is not a number; None: none), and whether the
    body comes in another framing (``Transfer-Encoding``) or with more than one length."""
    declared: int | None = None
    framed = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.strip()
            framed = framed or declared is not None
            declared = int(text) if text.isdigit() else -1
        elif name == b"transfer-encoding":
            framed = True
    return declared, framed


def _control_character_in(scope: Scope) -> str | None:
    if _CONTROL.search(scope["path"].encode("utf-8", "surrogateescape")):
        return "path"
    if _CONTROL.search(unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" "))):
        return "query"
    return None
