"""The asynchronous client: :class:`ClientCore` steps run by the asynchronous driver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Unpack

import anyio
import httpx

from .config import DEFAULT_URL, ClientConfig, ClientOptions, http_options
from .core import MAX_POLL_TIMEOUT, ClientCore, JobTarget, PageRequest, StateFilter
from .drivers import ChangeCallback, Steps, T, run_steps_async
from .job import Job


class AsyncClient:
    """A client for Deploy-style job APIs, for ``async`` code (asyncio or trio).

    ::

        async with AsyncClient("http://127.0.0.1:8080") as client:
            job = await client.run("POST", "/api/hosts", {"name": "h1", "address": "10.0.0.1"})

    Every method retries connection errors and 429/502/503/504 answers (see
    :class:`~tarefa.client.ClientOptions` for the settings) and raises a
    :class:`~tarefa.client.ClientError` subclass on failure. ``on_change`` callbacks may be
    plain functions or coroutine functions.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        **options: Unpack[ClientOptions],
    ) -> None:
        self.core = ClientCore(ClientConfig.from_options(url, options))
        self._http = httpx.AsyncClient(transport=transport, **http_options(options))
        self._sleep = sleep

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _drive(self, steps: Steps[T]) -> T:
        return await run_steps_async(steps, self._http, self._sleep)

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
        """Any call, with the same retries and errors; see :meth:`tarefa.client.Client.request`."""
        steps = self.core.request(
            method,
            path,
            json=json,
            params=params,
            headers=headers,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return await self._drive(steps)
