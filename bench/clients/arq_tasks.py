"""The arq worker of the comparison (runs in ``bench/.venvs/arq``): ``python -m bench.clients.arq_tasks``.

Environment: ``BENCH_REDIS_PORT``, ``BENCH_REDIS_DB``, ``BENCH_MAX_JOBS`` (jobs at once),
``BENCH_POLL_DELAY`` (seconds between the worker's polls of the queue; arq's default is 0.5),
``BENCH_READY_FILE`` (touched once the worker is up). No per-job logging, as in the other systems.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, ClassVar

from arq import func
from arq.connections import RedisSettings
from arq.worker import run_worker


async def noop(ctx: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    return args


async def sleep(ctx: dict[str, Any], args: dict[str, Any]) -> float:
    until = args.get("until")
    await asyncio.sleep(max(0.0, args["seconds"] if until is None else until - time.time()))
    return time.time()


def redis_settings() -> RedisSettings:
    port = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
    return RedisSettings(host="127.0.0.1", port=port, database=int(os.environ.get("BENCH_REDIS_DB", "15")))


async def announce_ready(ctx: dict[str, Any]) -> None:
    ready = os.environ.get("BENCH_READY_FILE")
    if ready:
        Path(ready).touch()


class WorkerSettings:
    functions: ClassVar[list[Any]] = [func(noop, name="noop"), func(sleep, name="sleep")]
    redis_settings = redis_settings()
    max_jobs = int(os.environ.get("BENCH_MAX_JOBS", "10"))
    poll_delay = float(os.environ.get("BENCH_POLL_DELAY", "0.5"))
    on_startup = announce_ready
    log_results = False


if __name__ == "__main__":
    run_worker(WorkerSettings)  # type: ignore[arg-type]
