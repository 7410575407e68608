"""A small application on tarefa's public API, for the API tests (in-process, real SQLite file)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Response
from pydantic import BaseModel

from tarefa import ApiError, AsyncCall, JobContext, OperationError, Tarefa, ThreadJobContext, asynchronous


class Step(BaseModel):
    """``gate``: the job reports, then waits until the test opens this gate."""

    name: str = "x"
    gate: str | None = None
    steps: int = 0
    fail: str | None = None
    crash: bool = False
    data: Any = None  # stored with the job, never used
    result: Any = None  # returned as the job's result when given
    say: str | None = None  # reported as a message
    huge_result: bool = False  # return an integer no store can keep


class Gates:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def __getitem__(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    def open(self, name: str) -> None:
        self[name].set()


def build_app(
    store: str, *, workers: int = 4, retention: timedelta = timedelta(days=7)
) -> tuple[FastAPI, Tarefa, Gates]:
    jobs = Tarefa(store, workers=workers, retention=retention, grace_seconds=2)
    app = FastAPI()
    jobs.mount(app, prefix="/api")
    gates = Gates()

    @jobs.operation("thing.make")
    async def make(ctx: JobContext, step: Step) -> dict[str, Any]:
        for i in range(step.steps):
            await ctx.report(f"step {i + 1} of {step.steps}", progress=(i + 1) * 100 // step.steps)
        if step.gate is not None:
            await ctx.report(f"waiting for gate {step.gate}")
            gate = asyncio.create_task(gates[step.gate].wait())
            while not gate.done():
                await ctx.sleep(0.01)  # raises JobCancelled on cancel
        if step.say is not None:
            await ctx.report(step.say.replace("{NUL}", "\x00"))  # a NUL made by the operation itself
        if step.crash:
            raise RuntimeError("an unexpected bug")
        if step.fail:
            raise OperationError(step.fail, f"failed on purpose: {step.fail}")
        if step.huge_result:
            return {"n": 2**70}
        return {"name": step.name} if step.result is None else step.result

    @jobs.operation("thing.sync")
    def make_in_thread(ctx: ThreadJobContext, step: Step) -> dict[str, Any]:
        for i in range(step.steps):
            ctx.report(f"thread step {i + 1}", progress=(i + 1) * 100 // step.steps)
        return {"name": step.name, "thread": True}

    @app.post("/api/things", **asynchronous())
    async def start_thing(step: Step, call: AsyncCall, key: str | None = None) -> Response:
        if step.name == "refused":
            raise ApiError(409, "thing_exists", "that thing exists", target="name")
        return await call.start("thing.make", step, resource=f"/api/things/{step.name}", resource_key=key)

    @app.post("/api/sync-things", **asynchronous())
    async def start_sync_thing(step: Step, call: AsyncCall) -> Response:
        return await call.start("thing.sync", step)

    @app.get("/api/broken")
    async def broken() -> None:
        raise RuntimeError("a bug in an endpoint")

    return app, jobs, gates
