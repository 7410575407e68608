"""An asynchronous call with an Idempotency-Key and return_timeout: its 200 is recorded by the job's
end, in the same transaction, when the job runs in this process (tarefa.held_answers) — no write
of its own — and a replay repeats the first answer's status whichever side of the deadline the end
lands. Through the app's real lifespan, on a real SQLite file; a second engine on the same file
plays the server after a restart. On PostgreSQL, with the API and the worker as two engines (two
processes' worth: ``serve --workers 0`` and ``tarefa worker``), the end records the 200 by itself
when it comes by the call's deadline (``answer_by``), and a call that gives up says 202 for good."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response

from tarefa import AsyncCall, JobContext, Tarefa, asynchronous
from tarefa.store import StoreUnavailable

pytestmark = pytest.mark.anyio


def build(store: str, workers: int = 2) -> tuple[FastAPI, Tarefa]:
    jobs = Tarefa(store, workers=workers)
    app = FastAPI()
    jobs.mount(app, prefix="/api")

    @jobs.operation("nap")
    async def nap(ctx: JobContext, seconds: float) -> dict[str, float]:
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.post("/api/nap", **asynchronous())
    async def start_nap(body: dict[str, float], call: AsyncCall) -> Response:
        return await call.start("nap", body["seconds"])

    return app, jobs


def _count_own_writes(jobs: Tarefa) -> list[int]:
    """The statuses the engine's calls record by a write of their own, from now on."""
    recorded: list[int] = []
    store: Any = jobs.store
    own_write = store.set_answer_status

    async def counted(job_id: str, status: int) -> None:
        recorded.append(status)
        await own_write(job_id, status)

    store.set_answer_status = counted
    return recorded


@asynccontextmanager
async def serving(path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Tarefa, list[int]]]:
    """A client of the app, its engine, and the statuses recorded by a write of their own."""
    app, jobs = build(f"sqlite:///{path}")
    async with app.router.lifespan_context(app):
        recorded = _count_own_writes(jobs)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, jobs, recorded


@asynccontextmanager
async def split(url: str) -> AsyncIterator[tuple[httpx.AsyncClient, list[int]]]:
    """An API engine with no workers and a worker engine on one PostgreSQL database: a client of
    the API, and the statuses the API records by a write of its own."""
    api_app, api = build(url, workers=0)
    worker_app, _ = build(url, workers=2)
    async with worker_app.router.lifespan_context(worker_app), api_app.router.lifespan_context(api_app):
        recorded = _count_own_writes(api)
        transport = httpx.ASGITransport(app=api_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, recorded


async def _call(client: httpx.AsyncClient, key: str, seconds: float, return_timeout: float) -> httpx.Response:
    return await client.post("/api/nap", json={"seconds": seconds}, headers={"Idempotency-Key": key},
                             params={"return_timeout": return_timeout})  # fmt: skip


async def _until_it_succeeds(client: httpx.AsyncClient, job_id: str) -> None:
    for _ in range(100):
        if (await client.get(f"/api/jobs/{job_id}")).json()["record"]["state"] == "success":
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"job {job_id} did not succeed within 5 s")


def _holds(jobs: Tarefa) -> int:
    runner: Any = jobs.jobs.runner
    return len(runner.answer_holds)


async def test_the_end_records_the_200_with_no_write_of_its_own_and_a_restart_replays_it(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    async with serving(path) as (client, jobs, recorded):
        first = await _call(client, "k1", 0, 10)
        assert first.status_code == 200, first.text
        assert first.json()["job"]["state"] == "success"
        assert recorded == []  # recorded by the end's own transaction
        assert _holds(jobs) == 0
        again = await _call(client, "k1", 0, 10)
        assert again.status_code == 200 and again.json() == first.json()
    async with serving(path) as (client, _, _):  # the server again, after a restart
        replay = await _call(client, "k1", 0, 0)
        assert replay.status_code == 200 and replay.json() == first.json()


async def test_a_call_that_gave_up_at_its_deadline_stays_a_202(tmp_path: Path) -> None:
    async with serving(tmp_path / "held.db") as (client, jobs, recorded):
        first = await _call(client, "k2", 1.5, 1)
        assert first.status_code == 202, first.text
        await _until_it_succeeds(client, first.json()["job"]["id"])
        replay = await _call(client, "k2", 1.5, 10)
        assert replay.status_code == 202, replay.text  # the first answer's status, the job as it is now
        assert replay.json()["job"]["state"] == "success"
        assert recorded == [] and _holds(jobs) == 0


def _slow_ends(jobs: Tarefa, before: Callable[[], Any]) -> None:
    store: Any = jobs.store
    finish = store.finish_job

    async def slow_finish(*args: Any, **kwargs: Any) -> Any:
        await before()
        return await finish(*args, **kwargs)

    store.finish_job = slow_finish


async def test_an_end_being_stored_at_the_deadline_decides_the_answer(tmp_path: Path) -> None:
    async with serving(tmp_path / "held.db") as (client, jobs, recorded):
        _slow_ends(jobs, lambda: asyncio.sleep(1.2))  # the end lands 0.2 s after the call's deadline
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = await _call(client, "k3", 0, 1)
        assert loop.time() - started >= 1.1
        assert first.status_code == 200, first.text  # the end that recorded 200 was in flight
        assert first.json()["job"]["state"] == "success"
        replay = await _call(client, "k3", 0, 0)
        assert replay.status_code == 200 and replay.json() == first.json()
        assert recorded == [] and _holds(jobs) == 0


async def test_an_end_retried_after_a_failed_attempt_still_records_the_200(tmp_path: Path) -> None:
    async with serving(tmp_path / "held.db") as (client, jobs, recorded):
        failures = [StoreUnavailable("the disk went away for a moment")]

        async def fail_once() -> None:
            if failures:
                raise failures.pop()

        _slow_ends(jobs, fail_once)
        first = await _call(client, "k4", 0, 30)
        assert first.status_code == 200, first.text
        assert not failures  # the first attempt failed; the retry stored the end and the 200
        replay = await _call(client, "k4", 0, 0)
        assert replay.status_code == 200 and replay.json() == first.json()
        assert recorded == [] and _holds(jobs) == 0


async def test_without_an_idempotency_key_nothing_is_held(tmp_path: Path) -> None:
    async with serving(tmp_path / "held.db") as (client, jobs, recorded):
        answer = await client.post("/api/nap", json={"seconds": 0}, params={"return_timeout": 10})
        assert answer.status_code == 200 and recorded == [] and _holds(jobs) == 0


async def test_across_processes_the_end_records_the_200_by_the_deadline(fresh_postgres_url: str) -> None:
    async with split(fresh_postgres_url) as (client, recorded):
        first = await _call(client, "p1", 0, 10)
        assert first.status_code == 200, first.text
        assert first.json()["job"]["state"] == "success"
        assert recorded == []  # the worker's end recorded it, in its own statement
        replay = await _call(client, "p1", 0, 0)
        assert replay.status_code == 200 and replay.json() == first.json()


async def test_across_processes_a_call_that_gave_up_says_202_for_good(fresh_postgres_url: str) -> None:
    async with split(fresh_postgres_url) as (client, recorded):
        first = await _call(client, "p2", 1.5, 1)
        assert first.status_code == 202, first.text
        assert recorded == [202]  # else the end to come, by the deadline or not, could record 200
        await _until_it_succeeds(client, first.json()["job"]["id"])
        replay = await _call(client, "p2", 1.5, 10)
        assert replay.status_code == 202, replay.text
        assert replay.json()["job"]["state"] == "success"
