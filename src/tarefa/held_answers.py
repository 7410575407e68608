"""Answers held by ``return_timeout`` whose status the job's end records (issue 11).

An asynchronous call with an ``Idempotency-Key`` and ``return_timeout`` must make its answer's
status durable before it answers ``200``: a replay repeats the first answer's status (SPEC §2).
Written after the job's end, that is one more durable commit on the path of every such call.
When the job runs in this process, the runner writes the status in the end's own transaction
instead: the call registers an :class:`AnswerHold` before its insert, the runner *takes* it
before it stores the end, and the store records ``200`` with the end (``finish_job(...,
answer_status=200)``). Both sides run on one event loop, so the hold's state says, without a
race, which side decides the status:

- ``WAITING``: nobody has decided. At its deadline the call gives up (``GONE``) and answers
  ``202``, whose status the insert already recorded; a runner finds nothing to take.
- ``TAKEN``: an end recording ``200`` is being stored. The call waits for that attempt's outcome,
  past its deadline if need be: whether it answers ``200`` is that outcome.
- ``DONE``: the end and the ``200`` are durable together: the call answers ``200`` with no write.
- ``UNKNOWN``: an attempt failed and may have landed anyway (a lost connection): the call records
  the status it answers itself, as when the job ends elsewhere.

When the job ends in another process, a store that ``records_answers_by`` (PostgreSQL) takes the
call's deadline with the insert (``answer_by``) and its end statement records ``200`` when it comes
by then; the call then answers ``200`` without a write, and records ``202`` for good if it gives up
(:meth:`tarefa.jobs.Jobs.wait_for_answer`).
"""

from __future__ import annotations

import asyncio
import enum


class HoldState(enum.Enum):
    WAITING = "waiting"
    TAKEN = "taken"
    DONE = "done"
    UNKNOWN = "unknown"
    GONE = "gone"


class AnswerHold:
    """One call holding its answer until its job ends."""

    __slots__ = ("_settled", "job_id", "state")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.state = HoldState.WAITING
        self._settled: asyncio.Future[None] | None = None

    def take(self) -> bool:
        """The runner, before it stores the end: True if that end is to record ``200``."""
        if self.state in (HoldState.WAITING, HoldState.UNKNOWN):
            self.state = HoldState.TAKEN
            return True
        return False

    def settle(self, state: HoldState) -> None:
        """The runner, after an attempt: ``DONE``, ``UNKNOWN`` or back to ``WAITING``."""
        self.state = state
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(None)
        self._settled = None

    async def attempt_settled(self) -> HoldState:
        """The state once the attempt in flight (``TAKEN``) has settled."""
        if self.state is HoldState.TAKEN:
            if self._settled is None:
                self._settled = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._settled)
        return self.state


class AnswerHolds:
    """The holds of one process, by job id."""

    def __init__(self) -> None:
        self._holds: dict[str, AnswerHold] = {}

    def __len__(self) -> int:
        return len(self._holds)

    def hold(self, job_id: str) -> AnswerHold:
        hold = self._holds[job_id] = AnswerHold(job_id)
        return hold

    def get(self, job_id: str) -> AnswerHold | None:
        return self._holds.get(job_id)

    def release(self, hold: AnswerHold) -> None:
        if self._holds.get(hold.job_id) is hold:
            del self._holds[hold.job_id]

    def take(self, job_id: str) -> AnswerHold | None:
        """The hold the end of ``job_id`` is to settle (it records ``200``), if any."""
        hold = self._holds.get(job_id)
        return hold if hold is not None and hold.take() else None
