"""The runner: claims queued jobs, runs their operations, holds and renews their leases.

One runner per process. It wakes when the store announces a queued job (and polls now and then
as a safety net), runs up to ``concurrency`` jobs at once, renews the leases of the jobs it holds,
recovers jobs whose worker is gone (SPEC §5), and stops gracefully.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import random
import secrets
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from pydantic import BaseModel

from .backoff import Backoff
from .held_answers import AnswerHold, AnswerHolds, HoldState
from .logs import job_id_var
from .metrics import Metrics
from .model import Job, JobState
from .operations import (
    JobCancelled,
    JobContext,
    Operation,
    OperationError,
    OperationRegistry,
    ThreadJobContext,
)
from .store import Claim, JobChange, Outcome, Store, StoreError, StoreUnavailable
from .values import UnstorableValue, check_json, storable_text

log = logging.getLogger("tarefa.runner")


_UNSTORABLE = "The job's outcome could not be stored; the server log has the details (job {})"
#: The pause between attempts to store an outcome while the store cannot write.
OUTCOME_BACKOFF = Backoff(first=0.05, factor=2.0, cap=2.0, jitter=0.25)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _json_result(value: Any) -> Any:
    """The operation's return value as JSON data (pydantic models and dataclasses included);
    :class:`~tarefa.values.UnstorableValue` if no store could keep it."""
    check_json(value.model_dump(mode="python") if isinstance(value, BaseModel) else value)
    try:
        data = orjson.loads(orjson.dumps(value, default=_to_builtin))
    except TypeError as exc:
        raise UnstorableValue("", str(exc)) from None
    check_json(data)
    return data


def _to_builtin(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"an operation returned {type(value).__name__}, which is not JSON")


def _settle(hold: AnswerHold | None, state: HoldState) -> None:
    if hold is not None:
        hold.settle(state)


class Runner:
    """Runs the jobs of ``registry``'s operations found in ``store``."""

    def __init__(
        self,
        store: Store,
        registry: OperationRegistry,
        *,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        poll_seconds: float | None = None,
        worker_id: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        # Every change reaches on_changes, so polling is only a safety net: rare for a store this
        # process owns, every second for a shared store (a NOTIFY may be lost while reconnecting).
        self.poll_seconds = poll_seconds or (30.0 if store.exclusive else 1.0)
        self.worker_id = worker_id or new_worker_id()
        self.metrics = metrics
        self.answer_holds = AnswerHolds()  # calls holding their answer for a job's end here
        self._running: dict[str, tuple[asyncio.Task[None], JobContext]] = {}
        self._reserved = 0  # slots promised to claims made with a new job's insert (reserve)
        self._pending = True  # queued jobs may be waiting for this runner: the claim loop claims
        self._wake = asyncio.Event()
        self._accepting = True
        self._tasks: list[asyncio.Task[None]] = []
        self._threads = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="tarefa-op")

    @property
    def running_jobs(self) -> list[str]:
        return list(self._running)

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what a crashed process left, then start claiming. A store that cannot write
        yet (a full disk) does not stop the start: the recovery scan tries again while running."""
        self.store.add_listener(self.on_changes)
        try:
            recovered = await self.store.recover_jobs(expired_only=not self.store.exclusive)
        except StoreUnavailable as exc:
            log.warning("cannot recover the jobs a stopped process left yet (will retry): %s", exc)
            recovered = []
        self._recovered(recovered)
        for job in recovered:
            log.warning(
                "recovered job %s (%s) left running by a stopped process: now %s",
                job.id,
                job.operation,
                job.state,
                extra={"job_id": job.id},
            )
        if self.concurrency > 0:
            self._tasks = [asyncio.create_task(self._claim_loop()), asyncio.create_task(self._lease_loop())]
        self._tasks.append(asyncio.create_task(self._recovery_loop()))

    def stop_accepting(self) -> None:
        """Stop taking new jobs (the first step of a graceful stop)."""
        self._accepting = False
        self._wake.set()

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop taking jobs, let running ones finish for ``grace_seconds``, release the rest."""
        self.stop_accepting()
        running = [task for task, _ in self._running.values()]
        if running:
            log.info("waiting up to %.0f s for %d running job(s) to finish", grace_seconds, len(running))
            await asyncio.wait(running, timeout=grace_seconds)
        left = list(self._running)
        for task, _ in self._running.values():
            task.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *(task for task, _ in self._running.values()), return_exceptions=True)
        if left:
            try:
                released = await self.store.release_jobs(self.worker_id, left)
            except StoreError as exc:  # their leases will run out; the next start recovers them
                log.warning("cannot release %d job(s) at stop: %s", len(left), exc)
                released = []
            for job in released:
                log.warning("released job %s at stop: now %s", job.id, job.state, extra={"job_id": job.id})
        self._threads.shutdown(wait=False, cancel_futures=True)

    # -- store events -------------------------------------------------------------------------

    def on_changes(self, changes: Sequence[JobChange]) -> None:
        """Store listener: wake the claim loop for queued jobs; pass cancel requests on. A
        change that a later one of the same commit supersedes (a job inserted and claimed at
        once) is passed over."""
        latest = {change.job_id: change.job for change in changes} if len(changes) > 1 else None
        for change in changes:
            job = change.job
            if job is None or (latest is not None and latest[change.job_id] is not job):
                continue
            if job.state is JobState.QUEUED and job.operation in self.registry:
                self._pending = True
                self._wake.set()
            elif job.cancel_requested and job.id in self._running:
                self._running[job.id][1]._request_cancel()

    # -- claiming -----------------------------------------------------------------------------

    def reserve(self, operation: str) -> Claim | None:
        """A claim for a new job of ``operation``, to be made in its insert's transaction (one
        commit for both), if this runner has a free slot for it now; then :meth:`claimed` must
        follow, with the claimed job or None."""
        if not self._accepting or operation not in self.registry:
            return None
        if self.concurrency - len(self._running) - self._reserved <= 0:
            return None
        self._reserved += 1
        return Claim(self.worker_id, self.lease_seconds)

    def claimed(self, job: Job | None) -> None:
        """The end of a :meth:`reserve`: run the job claimed with its insert (None: not claimed).
        The claim has committed: the job runs here, even if a stop has begun (the stop then
        treats it as any running job)."""
        self._reserved -= 1
        if job is not None:
            self._launch(job)
        else:
            self._wake.set()  # the slot is free again

    async def _claim_loop(self) -> None:
        """Claim while queued jobs may be waiting: at start, after a queued change, after a
        claim that filled every free slot, after an error, and at each safety-net poll. A slot
        that frees up with nothing known to be queued costs no store call."""
        operations = list(self.registry)
        self._pending = True
        while self._accepting:
            free = self.concurrency - len(self._running) - self._reserved
            self._wake.clear()
            jobs: list[Job] = []
            if free > 0 and self._pending:
                self._pending = False
                try:
                    jobs = await self.store.claim_jobs(
                        self.worker_id, operations=operations, limit=free, lease_seconds=self.lease_seconds
                    )
                except StoreError as exc:
                    log.warning("cannot claim jobs: %s", exc)
                    self._pending = True
                if len(jobs) >= free:
                    self._pending = True  # there may be more
            for job in jobs:
                self._launch(job)
            if len(jobs) < free or free <= 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
                except TimeoutError:
                    self._pending = True  # the safety net: a change may have been missed

    def _recovered(self, jobs: Sequence[Job]) -> None:
        if self.metrics is not None:
            self.metrics.jobs_recovered(jobs)

    def _launch(self, job: Job) -> None:
        operation = self.registry.get(job.operation)
        assert operation is not None  # claimed only among registered operations
        loop = asyncio.get_running_loop()
        context_type = JobContext if operation.is_async else ThreadJobContext
        context = context_type(job, lambda m, p: self._report(job.id, m, p), loop)
        if job.cancel_requested:
            context._request_cancel()
        if self.metrics is not None:
            self.metrics.job_started(job)
        task = asyncio.create_task(self._run(operation, job, context), name=f"tarefa-job-{job.id}")
        self._running[job.id] = (task, context)
        task.add_done_callback(lambda _: self._finished(job.id))

    def _finished(self, job_id: str) -> None:
        self._running.pop(job_id, None)
        if self._pending or not self._accepting:  # a free slot matters only if jobs may be queued
            self._wake.set()

    # -- running ------------------------------------------------------------------------------

    async def _run(self, operation: Operation, job: Job, context: JobContext) -> None:
        job_id_var.set(job.id)  # this task's own context: every log line of the job carries its id
        outcome = await self._execute(operation, job, context)
        await self._finish(job, outcome)

    async def _execute(self, operation: Operation, job: Job, context: JobContext) -> Outcome:
        try:
            args = operation.arguments(context, job.input)
            if operation.is_async:
                value = await operation.function(*args)
            else:
                loop = asyncio.get_running_loop()
                call = contextvars.copy_context().run
                value = await loop.run_in_executor(self._threads, lambda: call(operation.function, *args))
            return Outcome(JobState.SUCCESS, result=_json_result(value))
        except JobCancelled:
            return Outcome(JobState.FAILURE, error_code="cancelled", error_message="Cancelled while running")
        except OperationError as exc:
            return Outcome(
                JobState.FAILURE, error_code=storable_text(exc.code), error_message=storable_text(exc.message)
            )
        except UnstorableValue as exc:
            log.error("job %s (%s) returned a result that cannot be stored: %s", job.id, job.operation, exc)
            return Outcome(
                JobState.FAILURE,
                error_code="internal_error",
                error_message=f"The operation's result cannot be stored ({exc}); the server log has the details",
            )
        except Exception:
            log.exception("job %s (%s) failed unexpectedly", job.id, job.operation)
            return Outcome(
                JobState.FAILURE,
                error_code="internal_error",
                error_message=f"The operation failed unexpectedly; the server log has the details (job {job.id})",
            )

    async def _finish(self, job: Job, outcome: Outcome) -> None:
        """Store the outcome. While the store cannot write (unreachable, a full disk), the
        outcome is kept and retried with backoff until the store takes it or this process stops.

        An outcome the store refuses for good becomes an ``internal_error`` failure, so the job
        still ends now rather than at its lease's end.
        """
        attempt = 0
        while True:
            # a call holding its answer for this end (return_timeout with an Idempotency-Key): the
            # end records its 200 in the same transaction (tarefa.held_answers)
            hold = self.answer_holds.take(job.id)
            try:
                if hold is None:
                    finished = await self.store.finish_job(job.id, self.worker_id, outcome)
                else:
                    finished = await self.store.finish_job(job.id, self.worker_id, outcome, answer_status=200)
            except StoreUnavailable as exc:
                _settle(hold, HoldState.UNKNOWN)  # it may have landed all the same
                if attempt % 30 == 0:
                    log.warning("cannot store the end of job %s yet; keeping it and retrying: %s", job.id, exc)
                await asyncio.sleep(OUTCOME_BACKOFF.delay(attempt, random.random))
                attempt += 1
                continue
            except StoreError as exc:
                _settle(hold, HoldState.UNKNOWN)
                log.error("the store refused the outcome of job %s: %s", job.id, exc)
                if outcome.error_code == "internal_error":
                    return  # not even a plain failure can be stored: the recovery scan will settle it
                outcome = Outcome(
                    JobState.FAILURE, error_code="internal_error", error_message=_UNSTORABLE.format(job.id)
                )
                continue
            except BaseException:
                _settle(hold, HoldState.UNKNOWN)
                raise
            if finished is not None and finished.is_terminal:
                _settle(hold, HoldState.DONE)
            else:  # not held any more, or requeued: nothing recorded now (an earlier attempt may have)
                _settle(hold, HoldState.UNKNOWN if attempt else HoldState.WAITING)
            if finished is not None and self.metrics is not None:
                self.metrics.job_ended(finished)
            if finished is None and attempt:
                log.info("job %s has already ended: an earlier attempt to store its outcome may have landed", job.id)
            elif finished is None:
                log.warning("job %s ended, but this worker no longer held it; its outcome is dropped", job.id)
            elif attempt:
                log.info("stored the end of job %s after %d attempt(s)", job.id, attempt + 1)
            return

    async def _report(self, job_id: str, message: str | None, progress: int | None) -> None:
        text = None if message is None else storable_text(message)
        try:
            await self.store.report_progress(job_id, self.worker_id, message=text, progress=progress)
        except StoreError as exc:
            log.warning("cannot store the progress of job %s: %s", job_id, exc)

    # -- leases -------------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Renew the leases of the jobs this process runs, three times per lease period."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self._renew()
            except StoreError as exc:
                log.warning("cannot renew leases: %s", exc)

    async def _recovery_loop(self) -> None:
        """Recover jobs whose worker stopped renewing its lease (SPEC §5), soon after expiry. On
        a store this process owns, such jobs appear only when a write failed for long (a full
        disk): this process's own leases are renewed first, so only jobs it gave up are taken."""
        while True:
            await asyncio.sleep(
                min(2.0, self.lease_seconds / 5) if not self.store.exclusive else self.lease_seconds / 3
            )
            try:
                if self.store.exclusive:
                    await self._renew()
                recovered = await self.store.recover_jobs(expired_only=True)
                self._recovered(recovered)
                for job in recovered:
                    log.warning(
                        "recovered job %s whose worker stopped renewing its lease: now %s",
                        job.id, job.state, extra={"job_id": job.id},
                    )  # fmt: skip
            except StoreError as exc:
                log.warning("cannot recover expired jobs: %s", exc)

    async def _renew(self) -> None:
        held = list(self._running)
        if not held:
            return
        kept = await self.store.renew_leases(self.worker_id, held, self.lease_seconds)
        for job_id in set(held) - kept:
            entry = self._running.get(job_id)
            if entry is not None and not entry[0].done():  # a job that just finished is no loss
                log.warning("lost the lease of job %s; stopping it here", job_id)
                entry[0].cancel()
