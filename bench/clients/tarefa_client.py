"""tarefa's caller: ``tarefa.client.AsyncClient.run``, as an application uses it.

Options: ``urls`` (one or more API processes). The program makes one ``AsyncClient`` per URL and
every concurrent caller shares it (its connection pool has no limit, so callers never queue for a
connection); callers are given the URLs in turn. ``run`` submits with ``return_timeout`` (the
server holds the answer until the job ends) and falls back to long polls.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from bench.clients.driver import SubmitAndWait, main

import tarefa.client.http_aiohttp  # noqa: F401 - imported up front: the driver counts no import as the workload's
from tarefa.client import AsyncClient


async def opener(options: dict[str, Any]) -> tuple[SubmitAndWait, Callable[[], Awaitable[None]]]:
    clients = [AsyncClient(url, retry_for=30) for url in options["urls"]]
    turns = itertools.cycle(clients)

    async def submit_and_wait(kind: str, args: dict[str, Any]) -> Any:
        job = await next(turns).run("POST", f"/api/{kind}", args)
        return job.result

    async def close() -> None:
        for client in clients:
            await client.aclose()

    return submit_and_wait, close


if __name__ == "__main__":
    main(opener)
