"""HTTP through httpx: the synchronous client's transport, and the asynchronous one's on trio,
with an ``httpx.Auth`` other than Basic, or with an httpx transport given (``MockTransport`` in tests).

httpx's exceptions become :class:`~tarefa.client.drivers.RequestFailure` here, so that the
client's logic never sees a library's own error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from .drivers import Answer, HttpCall, OpenStream, RequestFailure, chunks, is_event_stream
from .retry import tls_reason

NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport errors raised before any byte of the request reached the server."""


def failure_of(error: httpx.RequestError) -> RequestFailure:
    """The :class:`RequestFailure` for an httpx error."""
    reason, tls = tls_reason(error)
    final = tls or not isinstance(error, httpx.TransportError)  # a TLS failure, an undecodable body
    return RequestFailure(reason, unsent=isinstance(error, NOT_SENT_ERRORS), final=final, cause=error)


@dataclass(slots=True)
class _Timeouts:
    """One :class:`httpx.Timeout` per (read, connect) pair, made once."""

    made: dict[tuple[float, float], httpx.Timeout] = field(default_factory=dict)

    def __call__(self, call: HttpCall) -> httpx.Timeout:
        key = (call.read_timeout, call.connect_timeout)
        timeout = self.made.get(key)
        if timeout is None:
            timeout = self.made[key] = httpx.Timeout(call.read_timeout, connect=call.connect_timeout)
        return timeout


@dataclass(slots=True)
class _Stream:
    """An open event stream: the response and its byte chunks."""

    response: httpx.Response
    chunks: Any  # Iterator[bytes] or AsyncIterator[bytes]

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def reason_phrase(self) -> str:
        return self.response.reason_phrase

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers

    @property
    def content(self) -> bytes:
        return b""


class HttpxHttp:
    """Blocking HTTP over an :class:`httpx.Client`."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self._timeouts = _Timeouts()

    def send(self, call: HttpCall) -> Answer:
        request = self.client.build_request(
            call.method, call.url, headers=list(call.headers), content=call.content, timeout=self._timeouts(call)
        )
        try:
            response = self.client.send(request, stream=call.stream)
            if not call.stream:
                return response
            if response.status_code == 200 and is_event_stream(response.headers):
                return _Stream(response, response.iter_raw())
            response.read()
            response.close()
            return response
        except httpx.RequestError as error:
            raise failure_of(error) from error

    def read(self, stream: OpenStream) -> bytes:
        assert isinstance(stream, _Stream)
        try:
            return chunks(stream.chunks)
        except httpx.RequestError as error:
            raise failure_of(error) from error

    def close_stream(self, stream: OpenStream) -> None:
        assert isinstance(stream, _Stream)
        stream.response.close()


class AsyncHttpxHttp:
    """Asynchronous HTTP over an :class:`httpx.AsyncClient`."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self._timeouts = _Timeouts()

    async def send(self, call: HttpCall) -> Answer:
        request = self.client.build_request(
            call.method, call.url, headers=list(call.headers), content=call.content, timeout=self._timeouts(call)
        )
        try:
            response = await self.client.send(request, stream=call.stream)
            if not call.stream:
                return response
            if response.status_code == 200 and is_event_stream(response.headers):
                return _Stream(response, response.aiter_raw())
            await response.aread()
            await response.aclose()
            return response
        except httpx.RequestError as error:
            raise failure_of(error) from error

    async def read(self, stream: OpenStream) -> bytes:
        assert isinstance(stream, _Stream)
        try:
            async for chunk in stream.chunks:
                if chunk:
                    return bytes(chunk)
            return b""
        except httpx.RequestError as error:
            raise failure_of(error) from error

    async def close_stream(self, stream: OpenStream) -> None:
        assert isinstance(stream, _Stream)
        await stream.response.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()
