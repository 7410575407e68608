"""The client's exceptions. Every failure the client expects is one of these, never a library's error.

::

    ClientError
    ├── ApiError            the server answered 4xx/5xx: status, code, message, target
    │   ├── Unauthorized    401 / 403
    │   ├── NotFound        404
    │   └── Conflict        409
    ├── TransportFailure    the server could not be reached in time (after retries)
    ├── ProtocolError       the answer is not what a Deploy-style job API sends
    ├── JobFailed           the job ended in ``failure`` (``run``)
    └── WaitTimeout         the job was still running when the caller's timeout ran out
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .drivers import Answer
    from .job import Job, JobError


class ClientError(Exception):
    """Base class of every exception the client raises on purpose."""


class ApiError(ClientError):
    """The server answered with an error status and (usually) ``{"error": {code, message, target}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        target: str | None = None,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        where = f" (target: {target})" if target else ""
        super().__init__(f"{status} {code}: {message}{where}")
        self.status = status
        self.code = code
        self.message = message
        self.target = target
        self.body = body
        self.request_id = request_id

    @classmethod
    def from_response(cls, response: Answer) -> ApiError:
        """The exception for an error answer, of the subclass its status calls for."""
        body = _json_or_none(response)
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            error = {"code": _code_of(response), "message": _message_of(response)}
        kind = _BY_STATUS.get(response.status_code, ApiError)
        return kind(
            response.status_code,
            str(error.get("code") or _code_of(response)),
            str(error.get("message") or _message_of(response)),
            target=str(error["target"]) if error.get("target") else None,
            body=body,
            request_id=response.headers.get("request-id"),
        )


class Unauthorized(ApiError):
    """401 or 403: the credentials are missing, wrong, or not allowed to do this."""


class NotFound(ApiError):
    """404: no such job or resource (or not visible to this user)."""


class Conflict(ApiError):
    """409: the request conflicts with the current state (duplicate name, job still running...)."""


_BY_STATUS: dict[int, type[ApiError]] = {401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Conflict}


class TransportFailure(ClientError):
    """The server could not be reached, or kept failing, until the retry budget ran out."""

    def __init__(self, message: str, *, url: str, attempts: int, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.attempts = attempts
        self.cause = cause


class ProtocolError(ClientError):
    """The server's answer cannot be understood as a Deploy-style job API answer."""


class JobFailed(ClientError):
    """The job ended in ``failure``; :attr:`job` is the terminal job, :attr:`error` its error."""

    def __init__(self, job: Job) -> None:
        error = job.error
        code = error.code if error else "failure"
        message = error.message if error else job.message
        super().__init__(f"job {job.id} ({job.operation or 'job'}) failed: {code}: {message}")
        self.job = job
        self.error: JobError | None = error
        self.code = code
        self.message = message


class WaitTimeout(ClientError):
    """The caller's timeout ran out before the job ended; :attr:`job` is the last state seen."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} is still {job.state.value} after {timeout:g} s: {job.message}")
        self.job = job
        self.timeout = timeout


def _json_or_none(response: Answer) -> Any:
    try:
        return orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        return None


def _code_of(response: Answer) -> str:
    return response.reason_phrase.lower().replace(" ", "_") or f"http_{response.status_code}"


def _message_of(response: Answer) -> str:
    text = response.content.decode(errors="replace").strip().splitlines()
    return text[0][:200] if text else response.reason_phrase or f"HTTP {response.status_code}"
