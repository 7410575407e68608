"""Exponential backoff with jitter: the one pause rule of every retry loop in tarefa (the client's
retries, the runner storing an outcome, the PostgreSQL listener reconnecting). Pure, no I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Attempt ``n`` (from 0) waits ``min(cap, first * factor**n)``, scaled by a random factor in
    ``[1 - jitter, 1]``."""

    first: float = 0.25
    factor: float = 2.0
    cap: float = 10.0
    jitter: float = 0.5

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        base = min(self.cap, self.first * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * random())
