"""A test application that configures its own job layer: 1 worker, a 1.5 s grace period.

``tarefa serve --app tests.e2e.apps.configured:app`` given no ``--workers``/``--grace`` should keep
these settings (the options override them only when given).
"""

from fastapi import FastAPI, Response

from tarefa import AsyncCall, JobContext, Tarefa, asynchronous

WORKERS = 1
GRACE_SECONDS = 1.5

jobs = Tarefa(workers=WORKERS, grace_seconds=GRACE_SECONDS)
app = FastAPI(title="tarefa e2e configured app")
jobs.mount(app, prefix="/api")


@jobs.operation("test.nap")
async def nap(ctx: JobContext, seconds: float) -> float:
    await ctx.report("Napping", progress=0)
    await ctx.sleep(seconds)
    return seconds


@app.post("/api/naps", **asynchronous())
async def start_nap(call: AsyncCall, seconds: float = 60.0) -> Response:
    return await call.start("test.nap", seconds)
