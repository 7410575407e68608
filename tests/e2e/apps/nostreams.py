"""A test application that serves jobs and long polls but no event streams, like a Deploy-style
server that predates SPEC §10: ``tarefa serve --app tests.e2e.apps.nostreams:app``.

``POST /api/steps {"count": N, "every": S}`` starts a job that reports N steps, one every S
seconds. Any path ending in ``/events`` answers ``404`` with the SPEC's error body.
"""

from typing import Any

from fastapi import FastAPI, Response
from pydantic import BaseModel, Field

from tarefa import AsyncCall, JobContext, Tarefa, asynchronous


class Steps(BaseModel):
    count: int = Field(3, ge=1, le=100)
    every: float = Field(0.2, ge=0, le=10)


jobs = Tarefa()
app = FastAPI(title="tarefa e2e app without event streams")
jobs.mount(app, prefix="/api")


@jobs.operation("test.steps")
async def steps(ctx: JobContext, params: Steps) -> dict[str, int]:
    for index in range(params.count):
        await ctx.report(f"Step {index + 1} of {params.count}", progress=index * 100 // params.count)
        await ctx.sleep(params.every)
    return {"steps": params.count}


@app.post("/api/steps", **asynchronous())
async def start_steps(body: Steps, call: AsyncCall) -> Response:
    return await call.start("test.steps", body)


NOT_FOUND = b'{"error": {"code": "not_found", "message": "no such route"}}'


class NoStreams:
    """An ASGI middleware: every ``.../events`` route gone."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/").endswith("/events"):
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(NOT_FOUND)).encode())]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": NOT_FOUND})
            return
        await self.app(scope, receive, send)


app.add_middleware(NoStreams)
