"""Limits (SPEC §7): long polls open at once per user (``429``) and queued jobs in the store
(``503``), each with ``Retry-After`` and the SPEC error body. A refused request changes nothing.

The request body size limit (``413``) is :mod:`tarefa.http.limits`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator

from .errors import ApiError

DEFAULT_MAX_WAITING_PER_USER = 1000
DEFAULT_MAX_QUEUED_JOBS = 100_000
#: How long a count of the queued jobs is trusted before the store is asked again (seconds).
QUEUED_COUNT_TTL = 1.0


class WaitingLimit:
    """At most ``limit`` long polls (and streams) open at once per user, in this process.
    Without users configured there is no user to count for (``hold(None)``): no limit."""

    def __init__(self, limit: int = DEFAULT_MAX_WAITING_PER_USER, retry_after: int = 1) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self._open: dict[str, int] = {}

    def open_for(self, user: str) -> int:
        return self._open.get(user, 0)

    @contextlib.contextmanager
    def hold(self, user: str | None) -> Iterator[None]:
        """One open wait of ``user`` for the duration of the block, or :class:`ApiError` 429."""
        self.enter(user)
        try:
            yield
        finally:
            self.leave(user)

    def enter(self, user: str | None) -> None:
        """Count one open wait of ``user`` (:class:`ApiError` 429 at the limit); :meth:`leave` it
        after. (:meth:`hold` without a context manager object held for the wait: issue 11, W5.)"""
        if user is None:
            return
        count = self._open.get(user, 0)
        if count >= self.limit:
            raise ApiError(
                429,
                "too_many_waiting",
                f"{count} long polls of yours are open at once, the most this server allows: "
                "wait for one to answer, or poll without poll_timeout",
                headers={"Retry-After": str(self.retry_after)},
            )
        self._open[user] = count + 1

    def leave(self, user: str | None) -> None:
        """The end of a wait counted by :meth:`enter`."""
        if user is None:
            return
        self._open[user] -= 1
        if not self._open[user]:
            del self._open[user]


class QueueLimit:
    """At most ``limit`` queued jobs in the store (all processes), counted at most once per
    :data:`QUEUED_COUNT_TTL` seconds (an indexed count), or :class:`ApiError` 503."""

    def __init__(
        self,
        count: Callable[[], Awaitable[int]],
        limit: int = DEFAULT_MAX_QUEUED_JOBS,
        *,
        retry_after: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self._count = count
        self._clock = clock
        self._known: tuple[float, int] | None = None

    async def queued(self) -> int:
        """The number of queued jobs, at most :data:`QUEUED_COUNT_TTL` seconds old."""
        now = self._clock()
        if self._known is None or now - self._known[0] >= QUEUED_COUNT_TTL:
            self._known = (now, await self._count())
        return self._known[1]

    def added(self) -> None:
        """A job was queued here: count it until the next count."""
        if self._known is not None:
            self._known = (self._known[0], self._known[1] + 1)

    async def check(self) -> None:
        queued = await self.queued()
        if queued >= self.limit:
            raise ApiError(
                503,
                "queue_full",
                f"{queued} jobs are queued, the most this server accepts: try again later",
                headers={"Retry-After": str(self.retry_after)},
            )
