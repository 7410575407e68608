"""The HTTP layer: job routes, the 202 helper, SPEC error bodies."""

from .asynccall import AsyncCall, JobStarter, asynchronous
from .errors import ApiError

__all__ = ["ApiError", "AsyncCall", "JobStarter", "asynchronous"]
