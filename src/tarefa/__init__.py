"""tarefa: a first-class asynchronous job layer for HTTP APIs.

Declare operations, mount the job routes, and make endpoints asynchronous::

    from fastapi import FastAPI
    from tarefa import AsyncCall, JobContext, Tarefa, asynchronous

    jobs = Tarefa()                      # sqlite:///./tarefa.db, 4 workers in this process
    app = FastAPI()
    jobs.mount(app, prefix="/api")       # GET /api/jobs, GET/PATCH/DELETE /api/jobs/{id}

    @jobs.operation("report.build")
    async def build_report(ctx: JobContext, params: ReportIn) -> dict:
        await ctx.report("Collecting data", progress=10)
        ...
        return {"url": "/reports/42"}

    @app.post("/api/reports", **asynchronous())
    async def start_report(body: ReportIn, call: AsyncCall):
        return await call.start("report.build", body)
"""

from .http import ApiError, AsyncCall, JobStarter, asynchronous
from .http.access import SIGNED_IN, Identity, Viewing, viewer_of
from .http.docs import serve_api_docs
from .http.mount import Tarefa
from .jobs import Viewer
from .model import Job, JobError, JobState
from .operations import JobCancelled, JobContext, OperationError, ThreadJobContext
from .users import User

__version__ = "0.1.0"

__all__ = [
    "SIGNED_IN",
    "ApiError",
    "AsyncCall",
    "Identity",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobStarter",
    "JobState",
    "OperationError",
    "Tarefa",
    "ThreadJobContext",
    "User",
    "Viewer",
    "Viewing",
    "__version__",
    "asynchronous",
    "serve_api_docs",
    "viewer_of",
]
