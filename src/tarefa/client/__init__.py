"""A client for Deploy-style asynchronous job APIs: submit a call, follow its job, get the result.

:class:`Client` (blocking) and :class:`AsyncClient` (``async``) share one implementation: the
steps in :mod:`tarefa.client.core`, run by two drivers (:mod:`tarefa.client.drivers`). See
``docs/client.md`` for the procedure.
"""

from __future__ import annotations

from ..backoff import Backoff
from .async_client import AsyncClient
from .config import DEFAULT_JOBS_PATH, DEFAULT_URL, ClientOptions
from .core import JobPage, new_idempotency_key
from .errors import (
    ApiError,
    ClientError,
    Conflict,
    JobFailed,
    NotFound,
    ProtocolError,
    TransportFailure,
    Unauthorized,
    WaitTimeout,
)
from .events import JobEvent
from .job import Job, JobError, JobState
from .retry import RetryNotice
from .sync_client import Client

__all__ = [
    "DEFAULT_JOBS_PATH",
    "DEFAULT_URL",
    "ApiError",
    "AsyncClient",
    "Backoff",
    "Client",
    "ClientError",
    "ClientOptions",
    "Conflict",
    "Job",
    "JobError",
    "JobEvent",
    "JobFailed",
    "JobPage",
    "JobState",
    "NotFound",
    "ProtocolError",
    "RetryNotice",
    "TransportFailure",
    "Unauthorized",
    "WaitTimeout",
    "new_idempotency_key",
]
