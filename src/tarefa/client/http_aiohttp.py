"""HTTP through aiohttp: the asynchronous client's transport on asyncio.

Chosen on measured cost (docs/client.md, "Transport"): a request through aiohttp took about a
fifth of the CPU of one through httpx on the development machine. This module is imported only
when an :class:`~tarefa.client.AsyncClient` sends its first request on asyncio, so that
``import tarefa.client`` does not pay for aiohttp.

The settings are the client's own: Basic authentication (given, or from ``~/.netrc``) as a header
built once; TLS verification with the system's CAs, a CA bundle or an :class:`ssl.SSLContext`
(the context made once, and only for ``https://``); the connect and read timeouts of each call.
aiohttp's exceptions become :class:`~tarefa.client.drivers.RequestFailure` here.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from .drivers import Answer, HttpCall, OpenStream, RequestFailure, is_event_stream
from .retry import tls_reason

NOT_SENT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
"""Raised before any byte of the request reached the server (a TLS failure is one too)."""


class _Answer:
    """An answer, body read."""

    __slots__ = ("content", "headers", "reason_phrase", "status_code")

    def __init__(self, status: int, reason: str, headers: CIMultiDictProxy[str], content: bytes) -> None:
        self.status_code = status
        self.reason_phrase = reason
        self.headers = headers
        self.content = content


class _Stream(_Answer):
    """An answer whose body is an event stream, read as it comes."""

    __slots__ = ("response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        super().__init__(response.status, response.reason or "", response.headers, b"")
        self.response = response


def failure_of(error: BaseException) -> RequestFailure:
    """The :class:`RequestFailure` for an aiohttp error (or a timeout)."""
    reason, tls = tls_reason(error)
    if isinstance(error, TimeoutError) and not str(error):
        reason = "timed out waiting for the server"
    final = tls or isinstance(error, aiohttp.ClientResponseError | aiohttp.InvalidURL)
    return RequestFailure(reason, unsent=isinstance(error, NOT_SENT_ERRORS), final=final, cause=error)


class AiohttpHttp:
    """Asynchronous HTTP over one :class:`aiohttp.ClientSession`, made in the running loop."""

    def __init__(
        self,
        *,
        headers: Mapping[str, str],
        verify: bool | str | ssl.SSLContext,
        max_connections: int | None,
    ) -> None:
        self._verify = verify
        self._tls: ssl.SSLContext | bool | None = None
        connector = aiohttp.TCPConnector(limit=max_connections or 0, keepalive_timeout=4.0, ttl_dns_cache=60)
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"Accept": "application/json", **headers},
            auto_decompress=True,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}

    def _tls_for(self, url: str) -> ssl.SSLContext | bool:
        if not url.startswith("https:"):
            return True  # unused for http://
        if self._tls is None:
            verify = self._verify
            if isinstance(verify, str):
                self._tls = ssl.create_default_context(cafile=verify)
            elif verify is True:
                self._tls = ssl.create_default_context()
            else:
                self._tls = verify  # False (no verification) or the caller's own context
        return self._tls

    def _timeout(self, call: HttpCall) -> aiohttp.ClientTimeout:
        key = (call.read_timeout, call.connect_timeout)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=call.connect_timeout, sock_read=call.read_timeout)
            self._timeouts[key] = timeout
        return timeout

    async def send(self, call: HttpCall) -> Answer:
        try:
            response = await self.session.request(
                call.method,
                URL(call.url, encoded=True),
                headers=call.headers or None,
                data=call.content,
                allow_redirects=False,
                timeout=self._timeout(call),
                ssl=self._tls_for(call.url),
            )
            if call.stream and response.status == 200 and is_event_stream(response.headers):
                return _Stream(response)
            try:
                content = await response.read()
            finally:
                response.release()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise failure_of(error) from error
        return _Answer(response.status, response.reason or "", response.headers, content)

    async def read(self, stream: OpenStream) -> bytes:
        assert isinstance(stream, _Stream)
        try:
            return await stream.response.content.readany()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise failure_of(error) from error

    async def close_stream(self, stream: OpenStream) -> None:
        assert isinstance(stream, _Stream)
        stream.response.close()

    async def aclose(self) -> None:
        await self.session.close()


def options_for_aiohttp(options: Mapping[str, Any], auth_header: str | None) -> dict[str, Any]:
    """The :class:`AiohttpHttp` arguments for the client's options."""
    headers = dict(options.get("headers", {}))
    if auth_header is not None:
        headers.setdefault("Authorization", auth_header)
    return {
        "headers": headers,
        "verify": options.get("verify", True),
        "max_connections": options.get("max_connections"),
    }
