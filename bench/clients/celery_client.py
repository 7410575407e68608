"""Celery's caller: ``task.delay(args)`` then ``AsyncResult.get()``, one thread per caller (the
Celery client API blocks). Runs in ``bench/.venvs/celery``. Options: ``threads``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.clients.celery_tasks import noop, sleep
from bench.clients.driver import SubmitAndWait, main

TASKS = {"noop": noop, "sleep": sleep}


def blocking_submit_and_wait(kind: str, args: dict[str, Any]) -> Any:
    return TASKS[kind].delay(args).get(timeout=300)


async def opener(options: dict[str, Any]) -> tuple[SubmitAndWait, Callable[[], Awaitable[None]]]:
    threads = ThreadPoolExecutor(max_workers=int(options["threads"]))
    loop = asyncio.get_running_loop()

    async def submit_and_wait(kind: str, args: dict[str, Any]) -> Any:
        return await loop.run_in_executor(threads, blocking_submit_and_wait, kind, args)

    async def close() -> None:
        threads.shutdown(wait=False)

    return submit_and_wait, close


if __name__ == "__main__":
    main(opener)
