"""The Celery application of the comparison (runs in ``bench/.venvs/celery``): Redis is broker and
result backend (``BENCH_REDIS_URL``). Worker: ``celery -A bench.clients.celery_tasks worker``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_ready

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(args: dict[str, Any]) -> dict[str, Any]:
    return args


@app.task(name="bench.sleep")
def sleep(args: dict[str, Any]) -> float:
    until = args.get("until")
    time.sleep(max(0.0, args["seconds"] if until is None else until - time.time()))
    return time.time()


@worker_ready.connect
def announce_ready(**_: Any) -> None:
    ready = os.environ.get("BENCH_READY_FILE")
    if ready:
        Path(ready).touch()
