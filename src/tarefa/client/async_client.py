"""The asynchronous client: :class:`ClientCore` steps run by the asynchronous driver.

Its HTTP is aiohttp on asyncio (about a fifth of httpx's CPU per request, measured: see
docs/client.md), chosen when the first request is sent, inside the running event loop; httpx on
trio, with an ``httpx.Auth`` that is not Basic, or when given an httpx transport (``transport=``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, Unpack

import anyio
import httpx
import sniffio

from .config import DEFAULT_URL, ClientConfig, ClientOptions, basic_header, http_options, netrc_file, netrc_header
from .core import MAX_POLL_TIMEOUT, ClientCore, JobTarget, PageRequest, StateFilter
from .drivers import AsyncHttp, ChangeCallback, Steps, T, iterate_steps_async, run_steps_async
from .events import JobEvent
from .job import Job

Transport = httpx.AsyncBaseTransport | Literal["aiohttp", "httpx"] | None


class AsyncClient:
    """A client for Deploy-style job APIs, for ``async`` code (asyncio or trio).

    ::

        async with AsyncClient("http://127.0.0.1:8080") as client:
            job = await client.run("POST", "/api/hosts", {"name": "h1", "address": "10.0.0.1"})

    Every method retries connection errors and 429/502/503/504 answers (see
    :class:`~tarefa.client.ClientOptions` for the settings) and raises a
    :class:`~tarefa.client.ClientError` subclass on failure. ``on_change`` callbacks may be
    plain functions or coroutine functions.

    One client serves any number of concurrent calls (its connections are pooled, without a
    limit unless ``max_connections`` sets one): share it, rather than making one per call.
    ``transport``: ``"aiohttp"`` or ``"httpx"`` to choose the HTTP library (default: aiohttp on
    asyncio, else httpx), or an :class:`httpx.AsyncBaseTransport` (e.g. ``httpx.MockTransport``).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        transport: Transport = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        **options: Unpack[ClientOptions],
    ) -> None:
        self.core = ClientCore(ClientConfig.from_options(url, options))
        self._url = url
        self._options = options
        self._transport = transport
        self._io: AsyncHttp | None = None
        self._sleep = sleep

    @property
    def http_library(self) -> str | None:
        """``"aiohttp"`` or ``"httpx"`` once the first request has been sent, else ``None``."""
        if self._io is None:
            return None
        return "httpx" if type(self._io).__name__ == "AsyncHttpxHttp" else "aiohttp"

    def _open(self) -> AsyncHttp:
        """The HTTP transport, made on first use inside the running event loop."""
        choice = self._transport
        if choice is None or choice == "aiohttp":
            header = _basic_header(self._options, self._url)
            usable = header is not False and sniffio.current_async_library() == "asyncio"
            if usable or choice == "aiohttp":
                if not usable:
                    raise ValueError("the aiohttp transport needs asyncio and Basic (or no) authentication")
                from .http_aiohttp import AiohttpHttp, options_for_aiohttp

                self._io = AiohttpHttp(
                    **options_for_aiohttp(self._options, header if isinstance(header, str) else None)
                )
                return self._io
        from .http_httpx import AsyncHttpxHttp

        given = choice if isinstance(choice, httpx.AsyncBaseTransport) else None
        self._io = AsyncHttpxHttp(httpx.AsyncClient(transport=given, **http_options(self._options)))
        return self._io

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        if self._io is not None:
            await self._io.aclose()
            self._io = None

    async def _drive(self, steps: Steps[T]) -> T:
        return await run_steps_async(steps, self._io or self._open(), self._sleep)

    async def submit(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        idempotency_key: str | bool = True,
        return_timeout: int | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Start an asynchronous call; see :meth:`tarefa.client.Client.submit`."""
        return await self._drive(
            self.core.submit(
                method,
                path,
                json,
                idempotency_key=idempotency_key,
                return_timeout=return_timeout,
                timeout=timeout,
            )
        )

    async def wait(
        self,
        job: JobTarget,
        *,
        timeout: float | None = None,
        poll_timeout: int = MAX_POLL_TIMEOUT,
        on_change: ChangeCallback | None = None,
    ) -> Job:
        """Follow a job with long polls until it ends; see :meth:`tarefa.client.Client.wait`."""
        return await self._drive(self.core.wait(job, timeout=timeout, poll_timeout=poll_timeout, on_change=on_change))

    async def run(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        idempotency_key: str | bool = True,
        timeout: float | None = None,
        poll_timeout: int = MAX_POLL_TIMEOUT,
        on_change: ChangeCallback | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        """Submit, then wait; see :meth:`tarefa.client.Client.run`."""
        steps = self.core.run(
            method,
            path,
            json,
            idempotency_key=idempotency_key,
            timeout=timeout,
            poll_timeout=poll_timeout,
            on_change=on_change,
            raise_on_failure=raise_on_failure,
        )
        return await self._drive(steps)

    async def watch(
        self,
        job: JobTarget,
        *,
        after: int | None = None,
        timeout: float | None = None,
        poll_timeout: int = MAX_POLL_TIMEOUT,
    ) -> AsyncIterator[JobEvent]:
        """The job's events until its terminal one; see :meth:`tarefa.client.Client.watch`."""
        steps = self.core.watch(job, after=after, timeout=timeout, poll_timeout=poll_timeout)
        async for event in iterate_steps_async(steps, self._io or self._open(), self._sleep):
            yield event

    async def events(
        self, *, state: StateFilter = None, operation: str | None = None, after: int | None = None
    ) -> AsyncIterator[JobEvent]:
        """The events of every visible job, live; see :meth:`tarefa.client.Client.events`."""
        steps = self.core.events(state=state, operation=operation, after=after)
        async for event in iterate_steps_async(steps, self._io or self._open(), self._sleep):
            yield event

    async def get(self, job: JobTarget, *, timeout: float | None = None) -> Job:
        """The job as it is now."""
        return await self._drive(self.core.get(job, timeout=timeout))

    async def list(
        self,
        *,
        state: StateFilter = None,
        operation: str | None = None,
        max_records: int | None = None,
        order_by: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Job]:
        """Every job that matches, page after page; see :meth:`tarefa.client.Client.list`."""
        where: PageRequest | None = self.core.first_page(
            state=state, operation=operation, max_records=max_records, order_by=order_by
        )
        while where is not None:
            page = await self._drive(self.core.page(where, timeout=timeout))
            for job in page.jobs:
                yield job
            where = self.core.next_page(page)

    async def cancel(self, job: JobTarget, *, timeout: float | None = None) -> Job:
        """Ask the server to cancel the job; returns the job as the server answered."""
        return await self._drive(self.core.cancel(job, timeout=timeout))

    async def delete(self, job: JobTarget, *, timeout: float | None = None) -> None:
        """Delete a terminal job."""
        await self._drive(self.core.delete(job, timeout=timeout))

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        idempotency_key: str | bool = False,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Any call, with the same retries and errors; see :meth:`tarefa.client.Client.request`
        (the answer is an :class:`httpx.Response` whatever the transport)."""
        steps = self.core.request(
            method,
            path,
            json=json,
            params=params,
            headers=headers,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return _as_httpx(await self._drive(steps))


def _basic_header(options: ClientOptions, url: str) -> str | bool | None:
    """The ``Authorization`` header for the options' auth: a Basic header, ``None`` (no auth),
    or ``False``: an ``httpx.Auth`` only httpx can perform."""
    auth = options.get("auth")
    if isinstance(auth, tuple):
        return basic_header(*auth)
    if auth is None:
        netrc = netrc_file()
        return None if netrc is None else netrc_header(str(netrc), url)
    if type(auth) is httpx.BasicAuth:
        return str(auth._auth_header)
    return False


def _as_httpx(answer: Any) -> httpx.Response:
    """An answer as an :class:`httpx.Response` (what ``request`` returns, whatever the transport)."""
    if isinstance(answer, httpx.Response):
        return answer
    return httpx.Response(answer.status_code, headers=list(answer.headers.items()), content=answer.content)
