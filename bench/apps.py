"""Applications the benchmarks serve with ``tarefa serve --app bench.apps:NAME``."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, Response

from tarefa import AsyncCall, JobContext, Tarefa, asynchronous

jobs = Tarefa()
app = FastAPI()
jobs.mount(app, prefix="/api")
TICK_SECONDS = float(os.environ.get("BENCH_TICK_SECONDS", "0.05"))


@jobs.operation("noop")
async def noop(ctx: JobContext, payload: Any) -> Any:
    """Returns its input."""
    return payload


@jobs.operation("ticker")
async def ticker(ctx: JobContext, count: int) -> int:
    """``count`` visible changes, one every TICK_SECONDS."""
    for i in range(count):
        await ctx.sleep(TICK_SECONDS)
        await ctx.report(f"tick {i + 1}", progress=(i + 1) * 100 // count)
    return count


@app.post("/api/noop", **asynchronous())
async def start_noop(payload: dict[str, Any], call: AsyncCall) -> Response:
    return await call.start("noop", payload)


@app.post("/api/ticker", **asynchronous())
async def start_ticker(count: int, call: AsyncCall) -> Response:
    return await call.start("ticker", count)
