"""A test application for several processes sharing one PostgreSQL store.

``tarefa serve --workers 0 --app tests.e2e.apps.multinode:app`` (API processes) and
``tarefa worker --app tests.e2e.apps.multinode:app`` (worker processes), with the repository root
on ``PYTHONPATH``.

- ``POST /api/once`` → job ``multi.once``: the default policy, never retried (``worker_lost``).
- ``POST /api/retryable`` → job ``multi.retryable``: declared safe to retry (3 attempts in all).

Each job first appends ``"<job id> <pid> <attempt>\\n"`` to the file named by
``$TAREFA_TEST_RUNLOG`` and fsyncs it, so the log survives a ``kill -9`` and tells how many times a
job started, and in which process. Then, ``steps`` times: wait ``step`` seconds and report
``Step i of n`` with its progress; and wait ``step`` seconds once more before it returns, so that
every visible change of the job is ``step`` seconds after the one before (a long poll sees each).
A retry does ``retry_steps`` steps instead, when given.
"""

import os

from fastapi import FastAPI, Response
from pydantic import BaseModel, Field

from tarefa import AsyncCall, JobContext, Tarefa, asynchronous

RUNLOG_ENV = "TAREFA_TEST_RUNLOG"


class Work(BaseModel):
    steps: int = Field(0, ge=0, le=1000, description="progress reports of the first attempt")
    retry_steps: int | None = Field(None, ge=0, le=1000, description="progress reports of a retry")
    step: float = Field(0.0, ge=0, le=60, description="seconds before each report, and before the end")


jobs = Tarefa()
app = FastAPI(title="tarefa e2e multi-node app")
jobs.mount(app, prefix="/api")


def log_start(job_id: str, attempt: int) -> None:
    """Append ``job id, pid, attempt`` to the run log, durably (O_APPEND: one write per line)."""
    fd = os.open(os.environ[RUNLOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{job_id} {os.getpid()} {attempt}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def work(ctx: JobContext, params: Work) -> dict[str, object]:
    attempt = ctx.job.attempts
    log_start(ctx.job_id, attempt)
    steps = params.steps if attempt <= 1 or params.retry_steps is None else params.retry_steps
    for index in range(1, steps + 1):
        await ctx.sleep(params.step)
        await ctx.report(f"Step {index} of {steps}", progress=index * 100 // steps)
    await ctx.sleep(params.step)
    return {"job": ctx.job_id, "attempt": attempt, "pid": os.getpid()}


@jobs.operation("multi.once")
async def once(ctx: JobContext, params: Work) -> dict[str, object]:
    return await work(ctx, params)


@jobs.operation("multi.retryable", retry_safe=True, max_attempts=3)
async def retryable(ctx: JobContext, params: Work) -> dict[str, object]:
    return await work(ctx, params)


@app.post("/api/once", **asynchronous())
async def start_once(body: Work, call: AsyncCall) -> Response:
    return await call.start("multi.once", body)


@app.post("/api/retryable", **asynchronous())
async def start_retryable(body: Work, call: AsyncCall) -> Response:
    return await call.start("multi.retryable", body)
