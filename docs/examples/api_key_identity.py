"""An application that signs its users in with an API key (FastAPI's own ``APIKeyHeader``) and
gives tarefa that identity: each user sees only their own jobs; ``ops`` sees every job."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from tarefa import AsyncCall, JobContext, Tarefa, User, asynchronous

API_KEYS = {  # in real life: a database, hashed keys, a secrets manager ...
    "key-of-alice-0123456789": User("alice"),
    "key-of-ops-9876543210": User("ops", admin=True),
}
api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


async def identity(request: Request) -> User | None:
    """The user the request's X-API-Key belongs to; None (→ 401) without a valid key."""
    key = await api_key(request)
    if key is None:
        return None
    for known, user in API_KEYS.items():  # compare_digest: no timing hint about a key's prefix
        if hmac.compare_digest(key.encode(), known.encode()):
            return user
    return None


jobs = Tarefa("memory://", identity=identity)
app = FastAPI()
jobs.mount(app, prefix="/api")


class ReportIn(BaseModel):
    title: str


@jobs.operation("report.build")
async def build_report(ctx: JobContext, params: ReportIn) -> dict[str, str]:
    await ctx.report(f"Building {params.title}", progress=50)
    return {"title": params.title}


@app.post("/api/reports", **asynchronous())
async def start_report(body: ReportIn, call: AsyncCall) -> Response:
    return await call.start("report.build", body)
