"""arq's caller: ``enqueue_job`` then ``job.result(poll_delay=...)``. Runs in ``bench/.venvs/arq``.

Options: ``poll_delay`` (seconds between the caller's result polls; arq's default is 0.5).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from arq import create_pool
from bench.clients.arq_tasks import redis_settings
from bench.clients.driver import SubmitAndWait, main


async def opener(options: dict[str, Any]) -> tuple[SubmitAndWait, Callable[[], Awaitable[None]]]:
    redis = await create_pool(redis_settings())
    poll_delay = float(options["poll_delay"])

    async def submit_and_wait(kind: str, args: dict[str, Any]) -> Any:
        job = await redis.enqueue_job(kind, args)
        assert job is not None
        return await job.result(timeout=300, poll_delay=poll_delay)

    return submit_and_wait, redis.aclose


if __name__ == "__main__":
    main(opener)
