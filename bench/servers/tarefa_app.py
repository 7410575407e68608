"""The application tarefa serves in the comparison: ``tarefa serve --app bench.servers.tarefa_app:app``.

Job bodies are the same in every system: ``noop`` returns its input; ``sleep`` sleeps (for
``seconds``, or until the wall-clock time ``until``) and returns the time it ended
(``time.time()``), so that a caller can tell how long after the end it saw the job end.
``ticker`` makes ``count`` visible changes, one every ``every`` seconds (the cost of waiting).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI, Response
from pydantic import BaseModel

from tarefa import AsyncCall, JobContext, Tarefa, asynchronous

jobs = Tarefa()
app = FastAPI()
jobs.mount(app, prefix="/api")


class SleepIn(BaseModel):
    seconds: float = 0.0
    until: float | None = None


class TickerIn(BaseModel):
    count: int
    every: float


@jobs.operation("bench.noop")
async def noop(ctx: JobContext, payload: Any) -> Any:
    return payload


@jobs.operation("bench.sleep")
async def sleep(ctx: JobContext, params: SleepIn) -> float:
    seconds = params.seconds if params.until is None else params.until - time.time()
    await asyncio.sleep(max(0.0, seconds))
    return time.time()


@jobs.operation("bench.ticker")
async def ticker(ctx: JobContext, params: TickerIn) -> int:
    for i in range(params.count):
        await asyncio.sleep(params.every)
        await ctx.report(f"tick {i + 1}", progress=(i + 1) * 100 // params.count)
    return params.count


@app.post("/api/noop", **asynchronous())
async def start_noop(payload: dict[str, Any], call: AsyncCall) -> Response:
    return await call.start("bench.noop", payload)


@app.post("/api/sleep", **asynchronous())
async def start_sleep(params: SleepIn, call: AsyncCall) -> Response:
    return await call.start("bench.sleep", params)


@app.post("/api/ticker", **asynchronous())
async def start_ticker(params: TickerIn, call: AsyncCall) -> Response:
    return await call.start("bench.ticker", params)
