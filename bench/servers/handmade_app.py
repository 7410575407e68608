"""The baseline most teams write first: FastAPI, a SQLite table of jobs, ``asyncio.create_task``.

``uvicorn bench.servers.handmade_app:app`` with ``HANDMADE_DB=/path/jobs.db``. A POST stores the
job (committed, WAL, synchronous=FULL as tarefa's default) and starts it as a task of the same
process; ``GET /jobs/{id}`` reads the row; clients poll it at a fixed interval. The blocking
``sqlite3`` calls run on the event loop, as they usually do in such code.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

app = FastAPI()
db = sqlite3.connect(os.environ.get("HANDMADE_DB", "handmade.db"), isolation_level=None, check_same_thread=False)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute(
    "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, result TEXT,"
    " created REAL NOT NULL, updated REAL NOT NULL)"
)
tasks: set[asyncio.Task[None]] = set()


class SleepIn(BaseModel):
    seconds: float = 0.0
    until: float | None = None


def set_state(job_id: str, state: str, result: Any = None) -> None:
    db.execute(
        "UPDATE jobs SET state = ?, result = ?, updated = ? WHERE id = ?",
        (state, json.dumps(result), time.time(), job_id),
    )


async def noop(payload: Any) -> Any:
    return payload


async def sleep(params: SleepIn) -> float:
    seconds = params.seconds if params.until is None else params.until - time.time()
    await asyncio.sleep(max(0.0, seconds))
    return time.time()


async def execute(job_id: str, body: Any, argument: Any) -> None:
    set_state(job_id, "running")
    try:
        set_state(job_id, "success", await body(argument))
    except Exception as exc:
        set_state(job_id, "failure", str(exc))


def start(body: Any, argument: Any) -> dict[str, str]:
    job_id = uuid.uuid4().hex
    now = time.time()
    db.execute("INSERT INTO jobs (id, state, created, updated) VALUES (?, 'queued', ?, ?)", (job_id, now, now))
    task = asyncio.create_task(execute(job_id, body, argument))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return {"id": job_id, "state": "queued"}


@app.post("/jobs/noop", status_code=202)
async def start_noop(payload: dict[str, Any]) -> dict[str, str]:
    return start(noop, payload)


@app.post("/jobs/sleep", status_code=202)
async def start_sleep(params: SleepIn) -> dict[str, str]:
    return start(sleep, params)


@app.get("/jobs/{job_id}")
async def get_job(job_id: str) -> dict[str, Any]:
    row = db.execute("SELECT state, result FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise HTTPException(404, "no such job")
    return {"id": job_id, "state": row[0], "result": None if row[1] is None else json.loads(row[1])}
