"""Submitting jobs and following them, for W6 (the cost of waiting): with the tarefa client's
long polls (``AsyncClient.wait``), with standard polls (``AsyncClient.get`` every ``interval``
seconds), or not at all (``none``: sleep ``seconds``, the jobs' length, plus a margin).

Spec (JSON, argv[1]): ``url``, ``path`` and ``json`` of the call that starts a job, ``jobs``,
``mode`` (``long``, ``poll`` or ``none``), ``interval``, ``seconds``. One client (and connection)
per job. Prints the requests sent after the submits, the final states and the client's CPU time
while following (after the submits).
"""

from __future__ import annotations

import asyncio
import json
import resource
import ssl
import sys
from typing import Any

import httpx

from tarefa.client import AsyncClient, Job


class CountingTransport(httpx.AsyncHTTPTransport):
    """Counts the requests sent through any of its instances."""

    requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        CountingTransport.requests += 1
        return await super().handle_async_request(request)


async def follow(client: AsyncClient, job: Job, spec: dict[str, Any]) -> str:
    if spec["mode"] == "long":
        return (await client.wait(job)).state.value
    if spec["mode"] == "none":
        await asyncio.sleep(spec["seconds"] + 1.0)
        return "unknown"
    while not job.is_terminal:
        await asyncio.sleep(spec["interval"])
        job = await client.get(job)
    return job.state.value


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    tls = ssl.create_default_context()  # shared: see tarefa_client.py
    clients = [AsyncClient(spec["url"], transport=CountingTransport(verify=tls)) for _ in range(spec["jobs"])]
    jobs = await asyncio.gather(*(client.submit("POST", spec["path"], spec["json"]) for client in clients))
    submitted, before = CountingTransport.requests, cpu_seconds()
    states = await asyncio.gather(*(follow(client, job, spec) for client, job in zip(clients, jobs, strict=True)))
    waiting_cpu = cpu_seconds() - before
    for client in clients:
        await client.aclose()
    return {"requests": CountingTransport.requests - submitted, "states": states, "client_cpu_s": waiting_cpu}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
