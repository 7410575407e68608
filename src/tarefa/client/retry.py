"""Timing decisions, pure: backoff delays, ``Retry-After``, deadlines, and the pace of polls."""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from ..backoff import Backoff
from .drivers import Answer, RequestFailure

RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""Answers that mean "not now" rather than "no": retried like a connection error."""

MIN_PAUSE = 0.1
"""The shortest pause after an early answer without a change, whatever the backoff settings."""


def retry_after(response: Answer, now: Callable[[], datetime] | None = None) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), or ``None``."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = now() if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point on the monotonic clock after which the caller no longer wants to wait (or never)."""

    at: float | None

    @classmethod
    def after(cls, clock: Callable[[], float], seconds: float | None) -> Deadline:
        return cls(None if seconds is None else clock() + seconds)

    def remaining(self, clock: Callable[[], float]) -> float:
        return math.inf if self.at is None else self.at - clock()

    def earlier(self, other: Deadline) -> Deadline:
        if self.at is None or other.at is None:
            return self if other.at is None else other
        return self if self.at <= other.at else other


@dataclass(slots=True)
class PollPacer:
    """Decides how long to pause between long polls, so that a server that answers at once without
    a change (one that ignores ``poll_timeout``) is polled with backoff instead of in a busy loop.

    An answer without a change is *early* when it came back in less than half the poll time it
    was given: the server does not hold long polls. From then on, until an unchanged answer
    comes late again, every answer is followed by a pause: the server's ``Retry-After`` if it
    sent one, else a backoff delay that grows with each early answer in a row and starts over
    after a change. A server that holds long polls is never paused for.
    """

    backoff: Backoff
    random: Callable[[], float]
    holds_polls: bool = True
    early_in_a_row: int = 0

    def pause_after(self, *, changed: bool, elapsed: float, poll_timeout: float, hint: float | None) -> float:
        if not changed:
            self.holds_polls = elapsed >= poll_timeout / 2
        if self.holds_polls:
            self.early_in_a_row = 0
            return 0.0
        self.early_in_a_row = 0 if changed else self.early_in_a_row + 1
        if hint is not None and hint > 0:
            return hint
        return max(MIN_PAUSE, self.backoff.delay(self.early_in_a_row, self.random))


@dataclass(frozen=True, slots=True)
class RetryNotice:
    """What the ``on_retry`` option is told before each new attempt: which call failed, why
    (``reason``), the how-manieth failure of this outage it was, and the pause before the next try."""

    method: str
    url: str
    reason: str
    attempt: int
    delay: float


def describe(outcome: Answer | RequestFailure) -> str:
    """Why an attempt failed, in one line."""
    if isinstance(outcome, RequestFailure):
        return outcome.reason
    return f"the server answered {outcome.status_code} {outcome.reason_phrase}".rstrip()


def tls_reason(error: BaseException) -> tuple[str, bool]:
    """A library's request error in one line, with a hint when the cause is a common TLS mistake,
    and whether it is a TLS failure (which fails the same way next time)."""
    reason = str(error) or type(error).__name__
    tls = _tls_error(error)
    if tls is not None and "WRONG_VERSION_NUMBER" in str(tls):
        return f"{reason} (the server does not speak TLS here: use http://)", True
    if isinstance(tls, ssl.SSLCertVerificationError):
        return f"{reason} (the server's certificate is not trusted: give the CA that signed it)", True
    return reason, tls is not None


@dataclass(slots=True)
class RetryBudget:
    """Whether and when to send a request again after ``outcome`` (a response or a transport
    error): connection errors and 429/502/503/504 are retried with backoff, or after the
    server's ``Retry-After``, while both the caller's deadline and ``retry_for`` seconds since
    the first failure allow it.

    A request that is not *replayable* (a POST without an idempotency key) is only retried when
    it surely did not reach the server: a connection that could not be opened, 429 or 503.
    """

    backoff: Backoff
    random: Callable[[], float]
    clock: Callable[[], float]
    deadline: Deadline
    retry_for: float | None
    replayable: bool
    attempts: int = 0
    outage: Deadline | None = None

    def delay_after(self, outcome: Answer | RequestFailure) -> float | None:
        """Seconds to wait before the next attempt, or ``None``: give up (or nothing to retry)."""
        self.attempts += 1
        if not self._retryable(outcome):
            return None
        if self.outage is None:
            self.outage = Deadline.after(self.clock, self.retry_for)
        remaining = self.deadline.earlier(self.outage).remaining(self.clock)
        hint = None if isinstance(outcome, RequestFailure) else retry_after(outcome)
        if hint is not None:
            return hint if hint <= remaining else None
        if remaining <= 0:
            return None
        return min(remaining, self.backoff.delay(self.attempts - 1, self.random))

    def _retryable(self, outcome: Answer | RequestFailure) -> bool:
        if isinstance(outcome, RequestFailure):
            return not outcome.final and (self.replayable or outcome.unsent)
        unsent = outcome.status_code in (429, 503)
        return outcome.status_code in RETRY_STATUSES and (self.replayable or unsent)


def _tls_error(error: BaseException) -> ssl.SSLError | None:
    """The TLS failure behind ``error``, if any: it will fail the same way next time."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None
