"""The floor of the PostgreSQL layer alone: the statements one no-op job costs tarefa on PostgreSQL,
sent from one process with nothing else around them (no HTTP, no listeners, no second process).

    python bench/pg_floor.py [--jobs 1000] [--rounds 2]

Per job, as the split deployment sends them when each write is alone in its batch: the insert (one
statement that also notifies, naming its ``Idempotency-Key``, with the call's deadline), the claim,
and the end (each one statement that notifies; the end records the held ``200`` by itself, as it
comes before that deadline). A new key costs tarefa no read (the filter of keys seen,
``tarefa.store.postgres``), so there is none here. Each statement is its own autocommit
transaction, committed with fsync (the server's default ``synchronous_commit``). One job after
the other: latency p50 and jobs/s, and this process's CPU per job. The PostgreSQL server's own CPU
is not counted. On a fresh database ``tarefa_floor_<pid>`` of ``$TAREFA_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``), dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tarefa.model import JobState, new_job, utcnow
from tarefa.store import postgres_sql as q
from tarefa.store.base import Idempotency, Outcome, apply_outcome
from tarefa.store.postgres import PostgresStore, _held_params, _insert_params, _row_to_job
from tarefa.store.postgres_listen import announcement, announcement_head

SERVER = os.environ.get("TAREFA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test").rsplit("/", 1)[0]
ORIGIN = "floor"


async def one_job(api: psycopg.AsyncConnection[Any], worker: psycopg.AsyncConnection[Any], n: int) -> None:
    """The three statements of one job: insert, claim, end (which records the 200)."""
    job = new_job("noop", now=utcnow(), owner="alice", input={"n": n})
    reads = api.cursor(row_factory=dict_row)
    parts = announcement(ORIGIN, job, job.id)
    assert parts is not None
    answer_by = job.create_time + timedelta(seconds=10)
    params = {**_insert_params(job, None, Idempotency(job.id, "h"), answer_by), **parts}
    await reads.execute(q.INSERT_JOB_ANNOUNCED, params)
    await reads.fetchall()
    now = utcnow()
    claim = {
        "operations": ["noop"], "limit": 1, "now": now, "worker": "w", "lease_expires": now + timedelta(seconds=30),
        "announce_head": announcement_head(ORIGIN),
    }  # fmt: skip
    writes = worker.cursor(row_factory=dict_row)
    await writes.execute(q.CLAIM_JOBS_ANNOUNCED, claim)
    [row] = [row for row in await writes.fetchall() if row["id"] is not None]
    held = _row_to_job(row)
    ended = apply_outcome(held, Outcome(JobState.SUCCESS, result={"n": n}), now=utcnow())
    ended_parts = announcement(ORIGIN, ended)
    assert ended_parts is not None
    end = {**_held_params(ended, held), **ended_parts}
    await writes.execute(q.UPDATE_HELD_JOB_ANNOUNCED, end)
    assert await writes.fetchall()


async def measure(url: str, jobs: int) -> dict[str, float]:
    api = await psycopg.AsyncConnection.connect(url, autocommit=True)
    worker = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        for n in range(50):  # warm-up: prepared statements, caches
            await one_job(api, worker, -n)
        latencies = []
        cpu, wall = time.process_time(), time.perf_counter()
        for n in range(jobs):
            started = time.perf_counter()
            await one_job(api, worker, n)
            latencies.append(time.perf_counter() - started)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await api.close()
        await worker.close()
    return {
        "jobs_per_s": jobs / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "client_cpu_ms_per_job": cpu / jobs * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    name = f"tarefa_floor_{os.getpid()}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = f"{SERVER}/{name}"
    try:
        store = PostgresStore(url)  # the schema, as tarefa migrates it
        await store.open()
        await store.close()
        for number in range(1, args.rounds + 1):
            figures = await measure(url, args.jobs)
            load = os.getloadavg()[0]
            print(f"round {number} (load {load:.2f}): " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    asyncio.run(main())
