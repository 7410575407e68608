"""A test application: two operations that write down every start of a job in a run log.

``tarefa serve --app tests.e2e.apps.runlog:app`` (with the repository root on ``PYTHONPATH``).

- ``POST /api/once`` → job ``test.once``: the default policy, never retried (``worker_lost``).
- ``POST /api/retryable`` → job ``test.retryable``: declared safe to retry.
- ``GET /api/boom``: an endpoint that fails unexpectedly (a 500).

Each job appends ``"<job id>\\n"`` to the file named by ``$TAREFA_TEST_RUNLOG`` and fsyncs it
before anything else, so the log survives a ``kill -9`` and tells how many times a job started.
Then it works for ``seconds`` (``retry_seconds`` on a retry), reporting progress every ``step``
seconds.
"""

import os

from fastapi import FastAPI, Response
from pydantic import BaseModel, Field

from tarefa import AsyncCall, JobContext, Tarefa, asynchronous

RUNLOG_ENV = "TAREFA_TEST_RUNLOG"


class Work(BaseModel):
    seconds: float = Field(1.0, ge=0, le=120, description="how long the first attempt works")
    retry_seconds: float | None = Field(None, ge=0, le=120, description="how long a retry works (default: seconds)")
    step: float = Field(0.1, gt=0, le=120, description="seconds between progress reports")


jobs = Tarefa()
app = FastAPI(title="tarefa e2e run-log app")
jobs.mount(app, prefix="/api")


def log_start(job_id: str) -> None:
    """Append the job id to the run log, durably."""
    fd = os.open(os.environ[RUNLOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{job_id}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def work(ctx: JobContext, params: Work) -> dict[str, object]:
    log_start(ctx.job_id)
    attempt = ctx.job.attempts
    seconds = params.seconds if attempt <= 1 or params.retry_seconds is None else params.retry_seconds
    steps = max(1, round(seconds / params.step))
    for index in range(steps):
        await ctx.report(f"Step {index + 1} of {steps} (attempt {attempt})", progress=index * 100 // steps)
        await ctx.sleep(seconds / steps)
    return {"job": ctx.job_id, "attempt": attempt}


@jobs.operation("test.once")
async def once(ctx: JobContext, params: Work) -> dict[str, object]:
    return await work(ctx, params)


@jobs.operation("test.retryable", retry_safe=True, max_attempts=3)
async def retryable(ctx: JobContext, params: Work) -> dict[str, object]:
    return await work(ctx, params)


@app.post("/api/once", **asynchronous())
async def start_once(body: Work, call: AsyncCall) -> Response:
    return await call.start("test.once", body)


@app.post("/api/retryable", **asynchronous())
async def start_retryable(body: Work, call: AsyncCall) -> Response:
    return await call.start("test.retryable", body)


@app.get("/api/boom")
async def boom() -> None:
    raise RuntimeError("boom: a secret detail that must stay in the server log")
