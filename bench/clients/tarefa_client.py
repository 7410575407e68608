"""tarefa's caller: ``tarefa.client.AsyncClient.run`` (submit, then long polls until the end).

Options: ``urls`` (one or more API processes, taken in turn). Each concurrent caller has a client
(and so a connection) of its own, as separate programs would: one shared httpx pool looks at
every one of its connections on each request, which alone would make the client the bottleneck.
The clients share one TLS context (``verify=``): httpx otherwise builds one per client, loading
the CA bundle each time (about 20 ms and 1 MB per client), even for ``http://`` URLs.
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from bench.clients.driver import SubmitAndWait, main

from tarefa.client import AsyncClient


async def opener(options: dict[str, Any]) -> tuple[SubmitAndWait, Callable[[], Awaitable[None]]]:
    urls = itertools.cycle(options["urls"])
    tls = ssl.create_default_context()
    idle: list[AsyncClient] = []
    made: list[AsyncClient] = []

    async def submit_and_wait(kind: str, args: dict[str, Any]) -> Any:
        if idle:
            client = idle.pop()
        else:
            client = AsyncClient(next(urls), retry_for=30, verify=tls)
            made.append(client)
        try:
            job = await client.run("POST", f"/api/{kind}", args)
        finally:
            idle.append(client)
        return job.result

    async def close() -> None:
        for client in made:
            await client.aclose()

    return submit_and_wait, close


if __name__ == "__main__":
    main(opener)
