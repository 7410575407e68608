"""The application layer: every use of a job, for a viewer, with no HTTP in sight.

:class:`Jobs` starts, reads, waits for, lists, cancels and deletes jobs and reads their history.
Every call takes the :class:`Viewer` it is made for, and applies ownership in one place: a job
belongs to the user who started it; another user never learns that it exists (it is "not
found"); an administrator sees every job. The HTTP routes, the 202 helper and any other front
end (a dashboard, a stream) are translations between their protocol and these calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import model
from .held_answers import HoldState
from .model import Job, JobEvent
from .operations import OperationRegistry, dump_input
from .store import Created, Idempotency, JobQuery, JobStore, Precondition, ResourceBusy
from .store.outbox import CallbackAttempt
from .values import check_text, text_problem
from .waiting import ChangeHub, HeldWait

if TYPE_CHECKING:
    from .runner import Runner


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who a call is made for: a user name and whether that user is an administrator."""

    name: str
    admin: bool = False

    def sees(self, job: Job | JobEvent) -> bool:
        """True if this viewer may see the job (or the event of a job)."""
        return self.admin or job.owner == self.name

    @property
    def shows_owners(self) -> bool:
        """True for an administrator signed in (not :data:`ANYONE`): the wire shows job owners."""
        return self.admin and bool(self.name)

    @property
    def owner_filter(self) -> str | None:
        """The owner whose jobs this viewer sees (None: everyone's)."""
        return None if self.admin else self.name


#: Until users are configured, every caller is "anyone": the jobs belong to no one (``""``) and
#: every caller sees them all.
ANYONE = Viewer("", admin=True)


class JobNotFound(Exception):
    """No such job, or not one the viewer may see (the two are never told apart)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"there is no job {job_id!r}")
        self.job_id = job_id


class UnknownOperation(ValueError):
    """A job was asked of an operation no one declared."""


class Jobs:
    """The jobs of one application (module doc). ``store`` gives the open store when called."""

    def __init__(self, store: Callable[[], JobStore], operations: OperationRegistry, hub: ChangeHub) -> None:
        self._store = store
        self._operations = operations
        self._hub = hub
        #: The runner of this process (set by the engine while it runs): a new job it can run at
        #: once is claimed in its insert's transaction (one commit for both).
        self.runner: Runner | None = None

    @property
    def store(self) -> JobStore:
        return self._store()

    # -- starting -------------------------------------------------------------------------------

    async def start(
        self,
        viewer: Viewer,
        operation: str,
        input: Any = None,
        *,
        resource: str | None = None,
        resource_key: str | None = None,
        idempotency: Idempotency | None = None,
        precondition: Precondition | None = None,
        callback: dict[str, str] | None = None,
        answer_timeout: float = 0,
    ) -> Created:
        """Store a queued job of ``operation`` for ``viewer``, durably (the core of every
        asynchronous call). :class:`~tarefa.store.ResourceBusy` names the holding job only when
        the viewer may see it (``job_id`` is empty otherwise). A ``precondition`` is checked on
        an application document in the same transaction as the insert (what it raises is raised).
        ``callback``: the job's callback subscription (:func:`tarefa.callbacks.subscription`).
        ``answer_timeout``: the caller will wait this many seconds for the end with
        :meth:`wait_for_answer` (``return_timeout``), with what the result's ``answer_by`` says."""
        declared = self._operations.get(operation)
        if declared is None:
            raise UnknownOperation(f"unknown operation {operation!r}: declare it with @tarefa.operation({operation!r})")
        data = dump_input(input)  # first: a bad part of the request is named by its own path
        for name, text in (("resource", resource), ("resource_key", resource_key)):
            if text is not None:
                check_text(text, name)
        if idempotency is not None:
            check_text(idempotency.key, "Idempotency-Key")
        if callback is not None:
            check_text(callback["url"], "Callback-URL")
        now = model.utcnow()
        job = model.new_job(
            operation,
            now=now,
            input=data,
            owner=viewer.name,
            resource=resource,
            max_attempts=declared.max_attempts,
            callback=callback,
        )
        runner = self.runner
        claim = runner.reserve(operation) if runner is not None else None
        claimed: Job | None = None
        # registered before the insert: the job may run and end here before the insert returns
        held = answer_timeout > 0 and idempotency is not None
        holds = runner.answer_holds if held and runner is not None else None
        hold = holds.hold(job.id) if holds is not None else None
        # an end anywhere up to this instant records the 200 itself (the store says if it can)
        store = self.store
        answer_by = now + timedelta(seconds=answer_timeout) if held and store.records_answers_by else None
        created: Created | None = None
        try:
            created = await store.create_job(
                job, idempotency=idempotency, resource_key=resource_key, precondition=precondition, claim=claim,
                answer_by=answer_by,
            )  # fmt: skip
            claimed = created.claimed
            if answer_by is not None and created.created:
                created = dataclasses.replace(created, answer_by=answer_by)
            return created
        except ResourceBusy as exc:
            holder = await self.store.get_job(exc.job_id, viewer.owner_filter) if exc.job_id else None
            raise ResourceBusy(exc.resource_key, holder.id if holder else "") from None
        finally:
            if holds is not None and hold is not None and (created is None or not created.created):
                holds.release(hold)
            if runner is not None and claim is not None:
                runner.claimed(claimed)

    async def replay(self, viewer: Viewer, idempotency: Idempotency) -> Created | None:
        """The job ``viewer`` first started with this key, as it is now; None for a new key.
        :class:`~tarefa.store.IdempotencyMismatch` if the key came with another request."""
        return await self.store.replay_idempotent(viewer.name, idempotency)

    async def wait_for_answer(
        self, viewer: Viewer, job: Job, timeout: float, *, idempotent: bool, answer_by: datetime | None = None
    ) -> tuple[Job, int]:
        """``return_timeout``: the job once it has ended and 200, or as it is after ``timeout``
        seconds and 202. An ``idempotent`` call's 200 is durable before it is returned: recorded
        with the job's end when the end is stored here (:mod:`tarefa.held_answers`), or, where
        the store records answers by their end, when the end came by ``answer_by`` (as
        :meth:`start` gave it), else by a write of its own; and a 202 where an end may record 200
        is written for good."""
        holds = self.runner.answer_holds if self.runner is not None and idempotent else None
        hold = holds.get(job.id) if holds is not None else None
        try:
            ended = await self.wait_until_terminal(viewer, job, timeout)
            if hold is not None and hold.state is HoldState.TAKEN:
                # an end that records 200 is being stored: it decides (and, if the wait ran
                # out first, the job as that end left it is read)
                if await hold.attempt_settled() is HoldState.DONE and not ended.is_terminal:
                    ended = await self._current(viewer, job.id) or ended
            if not ended.is_terminal:
                unknown = False
                if hold is not None:
                    unknown, hold.state = hold.state is HoldState.UNKNOWN, HoldState.GONE
                # an attempt that may have recorded 200 landed or not, or an end to come that
                # would record it: say 202 for good
                if unknown or answer_by is not None:
                    await self.record_answer(ended, 202)
                return ended, 202
            recorded = (hold is not None and hold.state is HoldState.DONE) or _answered_by_end(ended, answer_by)
            if idempotent and not recorded:
                await self.record_answer(ended, 200)
            return ended, 200
        finally:
            if hold is not None and holds is not None:
                if hold.state is not HoldState.TAKEN:
                    hold.state = HoldState.GONE
                holds.release(hold)

    async def record_answer(self, job: Job, status: int) -> None:
        """Remember the status of a job's first answer, for replays of its idempotency key."""
        await self.store.set_answer_status(job.id, status)

    # -- reading --------------------------------------------------------------------------------

    async def get(self, viewer: Viewer, job_id: str) -> Job:
        """The job as it is now (:class:`JobNotFound`)."""
        _check_id(job_id)
        job = await self._current(viewer, job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def _current(self, viewer: Viewer, job_id: str, baseline: datetime | None = None) -> Job | None:
        """The job now: as the hub last saw it change if it remembers it, else from the store.
        For a long poll from ``baseline`` on a shared store, the hub's copy if it is at least
        that new (:meth:`~tarefa.waiting.ChangeHub.known_since`)."""
        known = self._hub.known(job_id)
        if known is None and baseline is not None and self._hearing_every_change():
            known = self._hub.known_since(job_id, baseline)
        if known is not None:
            return known if viewer.sees(known) else None
        return await self.store.get_job(job_id, viewer.owner_filter)

    def _hearing_every_change(self) -> bool:
        """False while a shared store's ``LISTEN`` connection is down: the hub's copies may then
        miss changes until the catch-up, so a new poll reads the store."""
        listening: asyncio.Event | None = getattr(self.store, "listening", None)
        return listening is None or listening.is_set()

    async def wait_for_change(self, viewer: Viewer, job_id: str, *, baseline: datetime | None, timeout: float) -> Job:
        """A long poll (SPEC §3): the job once its ``last_modified`` is later than ``baseline``
        (default: as it is now), at once if it has ended, or as it is after ``timeout`` seconds.
        :class:`JobNotFound` if unknown, or deleted while waiting. No store query while waiting."""
        _check_id(job_id)
        job = await self._hub.wait_for_change(
            job_id, lambda: self._current(viewer, job_id, baseline), baseline=baseline, timeout=timeout
        )
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def hold_for_change(
        self, viewer: Viewer, job_id: str, *, baseline: datetime | None, timeout: float,
        done: Callable[[Job | None], None],
    ) -> Job | HeldWait:  # fmt: skip
        """:meth:`wait_for_change` parked without a task (:meth:`~tarefa.waiting.ChangeHub.hold`):
        the job if the answer is known at once, else a :class:`~tarefa.waiting.HeldWait` that calls
        ``done`` with the job later (None: deleted while waiting). :class:`JobNotFound` if unknown."""
        _check_id(job_id)
        held = await self._hub.hold(
            job_id, lambda: self._current(viewer, job_id, baseline), baseline=baseline, timeout=timeout, done=done
        )
        if held is None:
            raise JobNotFound(job_id)
        return held

    async def wait_until_terminal(self, viewer: Viewer, job: Job, timeout: float) -> Job:
        """The job once it has ended, or as it is after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not job.is_terminal and (remaining := deadline - loop.time()) > 0:
            changed = await self.wait_for_change(viewer, job.id, baseline=job.last_modified, timeout=remaining)
            if changed.last_modified == job.last_modified:
                break
            job = changed
        return job

    async def wait_for_any_change(self, viewer: Viewer, after: str | None, timeout: float) -> str:
        """A token of the changes ``viewer`` may see, once one comes after the token ``after``
        (at once without one), or after ``timeout`` seconds. No store query while waiting."""
        return await self._hub.wait_for_any(viewer.owner_filter, after, timeout)

    async def page(self, viewer: Viewer, query: JobQuery) -> list[Job]:
        """A page of the jobs ``viewer`` may see (``query.owner`` is set from the viewer)."""
        if query.operation is not None and text_problem(query.operation):
            return []  # no operation has such a name, and not every store can even look for it
        return await self.store.list_jobs(dataclasses.replace(query, owner=viewer.owner_filter))

    async def history(self, viewer: Viewer, job_id: str, *, after: int = 0, limit: int = 100) -> list[JobEvent]:
        """The job's events, oldest first, with ``seq > after`` (:class:`JobNotFound`)."""
        _check_id(job_id)
        events = await self.store.list_events(job_id, owner=viewer.owner_filter, after=after, limit=limit)
        if events is None:
            raise JobNotFound(job_id)
        return events

    async def callback_attempts(
        self, viewer: Viewer, job_id: str, *, after: int = 0, limit: int = 100
    ) -> list[CallbackAttempt]:
        """The attempts to deliver the job's callbacks, oldest first, with ``num > after``
        (:class:`JobNotFound`)."""
        _check_id(job_id)
        attempts = await self.store.list_callback_attempts(job_id, owner=viewer.owner_filter, after=after, limit=limit)
        if attempts is None:
            raise JobNotFound(job_id)
        return attempts

    # -- changing -------------------------------------------------------------------------------

    async def cancel(self, viewer: Viewer, job_id: str) -> Job:
        """Cancel a queued job, or ask a running one to stop (:class:`JobNotFound`;
        :class:`~tarefa.store.JobAlreadyTerminal` if it has ended)."""
        _check_id(job_id)
        job = await self.store.cancel_job(job_id, viewer.owner_filter)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def delete(self, viewer: Viewer, job_id: str) -> None:
        """Delete an ended job and its history (:class:`JobNotFound`;
        :class:`~tarefa.store.JobNotTerminal` if it has not ended)."""
        _check_id(job_id)
        if not await self.store.delete_job(job_id, viewer.owner_filter):
            raise JobNotFound(job_id)


def _answered_by_end(job: Job, answer_by: datetime | None) -> bool:
    """True if the end of ``job`` recorded 200 itself (it came by ``answer_by``: see :meth:`Jobs.start`)."""
    return answer_by is not None and job.end_time is not None and job.end_time <= answer_by


def _check_id(job_id: str) -> None:
    """An id no job can have (and not every store can look up) is simply not found."""
    if text_problem(job_id) is not None:
        raise JobNotFound(job_id)
