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

The names are imported on first use (PEP 562), so that ``import tarefa.client`` loads no server
module (no FastAPI, no store, no engine).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .callbacks import CallbackSettings
    from .http import ApiError, AsyncCall, JobStarter, asynchronous
    from .http.access import SIGNED_IN, Identity, Viewing, viewer_of
    from .http.docs import serve_api_docs
    from .http.mount import Tarefa
    from .jobs import Viewer
    from .model import Job, JobError, JobState
    from .operations import JobCancelled, JobContext, OperationError, ThreadJobContext
    from .store import Precondition
    from .users import User

__version__ = "0.1.0"

_SOURCES = {
    "Tarefa": ".http.mount",
    "ApiError": ".http",
    "AsyncCall": ".http",
    "JobStarter": ".http",
    "asynchronous": ".http",
    "serve_api_docs": ".http.docs",
    "Job": ".model",
    "JobError": ".model",
    "JobState": ".model",
    "JobCancelled": ".operations",
    "JobContext": ".operations",
    "OperationError": ".operations",
    "ThreadJobContext": ".operations",
    "Precondition": ".store",
    "SIGNED_IN": ".http.access",
    "Identity": ".http.access",
    "Viewing": ".http.access",
    "viewer_of": ".http.access",
    "Viewer": ".jobs",
    "User": ".users",
    "CallbackSettings": ".callbacks",
}

__all__ = [
    "SIGNED_IN",
    "ApiError",
    "AsyncCall",
    "CallbackSettings",
    "Identity",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobStarter",
    "JobState",
    "OperationError",
    "Precondition",
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


def __getattr__(name: str) -> Any:
    """Import an exported name from its module the first time it is asked for."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'tarefa' has no attribute {name!r}")
    value = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
