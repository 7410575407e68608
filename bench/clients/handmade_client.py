"""The hand-written baseline's caller: POST the job, then ``GET /jobs/{id}`` every ``interval``
seconds until it has ended (the first GET right after the POST), with httpx, a client (and so a
connection) per concurrent caller, all sharing one TLS context.

Options: ``url``, ``interval`` (seconds).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from bench.clients.driver import SubmitAndWait, main


async def follow(http: httpx.AsyncClient, kind: str, args: dict[str, Any], interval: float) -> Any:
    response = await http.post(f"/jobs/{kind}", json=args)
    response.raise_for_status()
    job_id = response.json()["id"]
    while True:
        job = (await http.get(f"/jobs/{job_id}")).raise_for_status().json()
        if job["state"] == "success":
            return job["result"]
        if job["state"] == "failure":
            raise RuntimeError(f"job {job_id} failed: {job['result']}")
        await asyncio.sleep(interval)


async def opener(options: dict[str, Any]) -> tuple[SubmitAndWait, Callable[[], Awaitable[None]]]:
    interval = float(options["interval"])
    tls = ssl.create_default_context()  # shared, as in tarefa_client.py
    idle: list[httpx.AsyncClient] = []
    made: list[httpx.AsyncClient] = []

    async def submit_and_wait(kind: str, args: dict[str, Any]) -> Any:
        if idle:
            http = idle.pop()
        else:
            http = httpx.AsyncClient(base_url=options["url"], timeout=60, verify=tls)
            made.append(http)
        try:
            return await follow(http, kind, args, interval)
        finally:
            idle.append(http)

    async def close() -> None:
        for http in made:
            await http.aclose()

    return submit_and_wait, close


if __name__ == "__main__":
    main(opener)
