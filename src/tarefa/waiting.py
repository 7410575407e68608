"""Long polls: waiting for a job to change without polling the store.

The :class:`ChangeHub` listens to the store's committed changes and fans each one out to every
request waiting on that job. A waiting request is a future and a timer: it costs no CPU and no
store query until its job changes or its time is up. The timers are shared: one per slice of
time in which waits end (:class:`Deadlines`), not one per wait.

No lost wake-up: a request registers its watch *before* it reads the job, so a change that
commits between the read and the wait is already recorded on the watch.

On a store this process alone writes (``exclusive``: SQLite, memory), every committed change
passes through the hub, in commit order; so the hub remembers the latest jobs it saw
(:meth:`ChangeHub.known`, up to :data:`REMEMBERED_JOBS`), and a poll of a recently changed job
is answered with no store read. A change committed but not yet delivered is no lost wake-up: the
watch is registered first, and the delivery wakes it.

On a shared store (PostgreSQL) the hub hears every committed change too, but later: another
process's change arrives with its ``NOTIFY`` (or with the catch-up after a lost ``LISTEN``
connection). So a plain read must go to the store (read-your-writes across processes), but a long
poll with a ``last_modified`` baseline may take the job from the hub if the hub's copy is at least
as new as the baseline (:meth:`ChangeHub.known_since`): a newer copy is a committed state later
than the caller's, the same answer a wake-up would give; an equal copy means wait, and any later
change, committed or not yet, will wake the watch (registered first) when it is delivered. A copy
older than the baseline is stale: the store is read. The hub keeps a job's newest copy only
(``last_modified`` grows strictly per job), whatever the order in which its own commits and other
processes' notifications reach it. While the ``LISTEN`` connection is down, new polls read the
store (:class:`~tarefa.jobs.Jobs` checks the store's ``listening``).

The hub also counts changes (a *generation*, per owner), so that a dashboard can wait for "any
change I may see after token T" (:meth:`ChangeHub.wait_for_any`) with no store query per waiter.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from .model import Job
from .store import JobChange

_DELETED = object()
#: Jobs the hub remembers (the most recently changed) when it sees every change of the store.
REMEMBERED_JOBS = 4096


class _Watch:
    """One waiting request: the newest change seen, and a future to wake it."""

    __slots__ = ("job_id", "latest", "wakeup")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.latest: Job | object | None = None  # a Job, _DELETED, or None (nothing new)
        self.wakeup: asyncio.Future[None] | None = None

    def offer(self, job: Job | None) -> None:
        if job is None:
            self.latest = _DELETED
        elif self.latest is not _DELETED:
            current = self.latest
            if not isinstance(current, Job) or job.last_modified > current.last_modified:
                self.latest = job
        self._wake()

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def take(self) -> Job | object | None:
        latest, self.latest = self.latest, None
        return latest


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


#: Deadlines are rounded up to this many seconds: waits that end in one such slice share a timer.
DEADLINE_SLICE = 0.01
#: A deadline more than :data:`FAR_DEADLINE` seconds away is rounded up to :data:`FAR_SLICES`
#: slices (0.1 s): ten times fewer timers and sets for thousands of 120 s long polls arriving over
#: a few seconds, each ending at most 0.1 s late (issue 11, W5).
FAR_DEADLINE = 10.0
FAR_SLICES = 10


class Deadlines:
    """One timer per slice of time in which waits end, not one per wait: a thousand long polls
    with the same timeout make a handful of timers, and a wait that ends early costs a set
    removal, not a cancelled timer left in the loop's heap. A wait ends at most
    :data:`DEADLINE_SLICE` late (0.1 s for one of more than :data:`FAR_DEADLINE` seconds). No
    timer exists while nothing waits."""

    def __init__(self) -> None:
        self._slices: dict[int, tuple[asyncio.TimerHandle, set[asyncio.Future[None]]]] = {}

    def add(self, loop: asyncio.AbstractEventLoop, deadline: float, future: asyncio.Future[None]) -> int:
        """Settle ``future`` at ``deadline`` (the loop's clock); returns the slice, for :meth:`remove`."""
        key = -int(-deadline // DEADLINE_SLICE)  # rounded up
        if deadline - loop.time() > FAR_DEADLINE:
            key = -(-key // FAR_SLICES) * FAR_SLICES
        entry = self._slices.get(key)
        if entry is None:
            entry = (loop.call_at(key * DEADLINE_SLICE, self._fire, key), set())
            self._slices[key] = entry
        entry[1].add(future)
        return key

    def remove(self, key: int, future: asyncio.Future[None]) -> None:
        entry = self._slices.get(key)
        if entry is not None:
            entry[1].discard(future)
            if not entry[1]:
                entry[0].cancel()
                del self._slices[key]

    def _fire(self, key: int) -> None:
        entry = self._slices.pop(key, None)
        if entry is not None:
            for future in entry[1]:
                _settle(future)

    def __len__(self) -> int:
        return len(self._slices)


class ChangeHub:
    """Fans committed job changes out to waiting requests (register it as a store listener)."""

    def __init__(self) -> None:
        self._watches: dict[str, set[_Watch]] = {}
        self._closing = False
        #: Called with the job whenever a long poll answers because of a change (metrics).
        self.on_wakeup: Callable[[Job], None] | None = None
        self._boot = secrets.token_hex(4)
        self._generation = 0
        self._owner_generation: dict[str, int] = {}
        self._deleted_generation = 0
        self._any: set[asyncio.Future[None]] = set()
        self.deadlines = Deadlines()
        self._remember = 0
        self._every_change = False
        self._known: dict[str, Job] = {}

    def remember(self, every_change: bool, size: int = REMEMBERED_JOBS) -> None:
        """``every_change``: the store's every commit reaches :meth:`publish` at once, in commit
        order (an exclusive store), so the latest jobs seen may answer reads (:meth:`known`); else
        (a shared store) they may answer long polls only (:meth:`known_since`, module doc)."""
        self._remember = size
        self._every_change = every_change
        self._known.clear()

    def known(self, job_id: str) -> Job | None:
        """The job as its latest committed change left it, if the hub remembers it and sees every
        change of the store as it commits."""
        return self._known.get(job_id) if self._every_change else None

    def known_since(self, job_id: str, baseline: datetime) -> Job | None:
        """For a long poll from ``baseline``: the job as the hub last heard it change, if that is
        at least as new as ``baseline`` (module doc); None: read the store."""
        job = self._known.get(job_id)
        return job if job is not None and job.last_modified >= baseline else None

    def _note(self, changes: Sequence[JobChange]) -> None:
        known = self._known
        for change in changes:
            previous = known.pop(change.job_id, None)  # re-inserted last: the dict's order is the age
            if change.job is not None:
                job = change.job  # a shared store's changes may come out of order: keep the newest
                known[change.job_id] = previous if previous and previous.last_modified > job.last_modified else job
        while len(known) > self._remember:
            del known[next(iter(known))]

    @property
    def waiting(self) -> int:
        """How many requests are waiting right now."""
        return sum(len(watches) for watches in self._watches.values()) + len(self._any)

    def publish(self, changes: Sequence[JobChange]) -> None:
        """Store listener: wake every request waiting on a changed job."""
        if changes:
            self._count(changes)
            if self._remember:
                self._note(changes)
        for change in changes:
            for watch in self._watches.get(change.job_id, ()):
                watch.offer(change.job)

    def _count(self, changes: Sequence[JobChange]) -> None:
        self._generation += 1
        for change in changes:
            if change.job is None:  # the owner of a deleted job is not known: everyone looks again
                self._deleted_generation = self._generation
            else:
                self._owner_generation[change.job.owner] = self._generation
        for future in self._any:
            _settle(future)

    # -- any change -------------------------------------------------------------------------------

    def token(self, owner: str | None) -> str:
        """An opaque token for "the changes ``owner`` (None: anyone) may see, up to now"."""
        return f"{self._boot}.{self._latest(owner)}"

    def _latest(self, owner: str | None) -> int:
        if owner is None:
            return self._generation
        return max(self._owner_generation.get(owner, 0), self._deleted_generation)

    def _generation_of(self, token: str | None) -> int:
        boot, _, number = (token or "").partition(".")
        return int(number) if boot == self._boot and number.isdigit() else -1

    async def wait_for_any(self, owner: str | None, after: str | None, timeout: float) -> str:
        """A new token once a change ``owner`` may see has come after the token ``after``, or
        after ``timeout`` seconds; at once for no token, or one of another process or start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        baseline = self._generation_of(after)
        while self._latest(owner) <= baseline and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            future: asyncio.Future[None] = loop.create_future()
            self._any.add(future)
            key = self.deadlines.add(loop, deadline, future)
            try:
                await future
            finally:
                self.deadlines.remove(key, future)
                self._any.discard(future)
        return self.token(owner)

    def close(self) -> None:
        """Graceful stop: every waiting request answers now with the job as it is."""
        self._closing = True
        for future in self._any:
            _settle(future)
        for watches in self._watches.values():
            for watch in watches:
                watch._wake()

    async def wait_for_change(
        self,
        job_id: str,
        read: Callable[[], Awaitable[Job | None]],
        *,
        baseline: datetime | None,
        timeout: float,
    ) -> Job | None:
        """The job once its ``last_modified`` is later than ``baseline`` (default: as read now),
        or as it is after ``timeout`` seconds; at once if it is terminal. None: unknown/deleted."""
        # One coroutine for the whole wait, with no context manager or helper coroutine left on
        # the stack while it waits: a held long poll's frames are its memory (issue 11, W5).
        watch = self._watch(job_id)
        try:
            job = await read()
            del read  # not kept (with what it holds) for the whole wait
            if job is None:
                return None
            if baseline is None:
                baseline = job.last_modified
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not (job.is_terminal or job.last_modified > baseline or self._closing):
                seen = self._catch_up(watch, job, baseline)
                if seen is None:
                    return None
                if seen is not job:
                    job = seen
                    continue
                if deadline - loop.time() <= 0:
                    break
                wakeup: asyncio.Future[None] = loop.create_future()
                watch.wakeup = wakeup
                key = self.deadlines.add(loop, deadline, wakeup)
                try:
                    await wakeup
                finally:
                    self.deadlines.remove(key, wakeup)
                    watch.wakeup = None
            return job
        finally:
            self._forget(watch)

    async def hold(
        self,
        job_id: str,
        read: Callable[[], Awaitable[Job | None]],
        *,
        baseline: datetime | None,
        timeout: float,
        done: Callable[[Job | None], None],
    ) -> Job | HeldWait | None:
        """:meth:`wait_for_change` without a task for the wait: the job (None: unknown) if the
        answer is known once read, else a :class:`HeldWait` that calls ``done`` with the job (or
        None) when :meth:`wait_for_change` would have returned it. A parked long poll then costs
        its watch, a future and this object: no coroutine frame (issue 11, W5)."""
        watch = self._watch(job_id)
        try:
            job = await read()
        except BaseException:
            self._forget(watch)
            raise
        del read
        if job is None:
            self._forget(watch)
            return None
        loop = asyncio.get_running_loop()
        held = HeldWait(self, watch, job, job.last_modified if baseline is None else baseline,
                        loop.time() + timeout, done)  # fmt: skip
        return held._step(loop)

    def _watch(self, job_id: str) -> _Watch:
        watch = _Watch(job_id)
        watches = self._watches.get(job_id)
        if watches is None:
            watches = self._watches[job_id] = set()
        watches.add(watch)
        return watch

    def _catch_up(self, watch: _Watch, job: Job, baseline: datetime) -> Job | None:
        """``job``, or the newer version ``watch`` has seen since (None: deleted); a change after
        ``baseline`` is told to ``on_wakeup``. The step :meth:`wait_for_change` and
        :class:`HeldWait` share."""
        latest = watch.take()
        if latest is _DELETED:
            return None
        if isinstance(latest, Job) and latest.last_modified > job.last_modified:
            job = latest
            if self.on_wakeup is not None and job.last_modified > baseline:
                self.on_wakeup(job)
        return job

    def _forget(self, watch: _Watch) -> None:
        watches = self._watches.get(watch.job_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.job_id]


#: The context :class:`HeldWait` wakes up in: no copy of the parking request's context (its
#: request id and the like) is kept for the whole wait; the answer sets its own.
_NO_CONTEXT = contextvars.Context()


class HeldWait:
    """A long poll parked by :meth:`ChangeHub.hold`: the same loop as
    :meth:`ChangeHub.wait_for_change`, run from its wake-up future's callback instead of a task."""

    __slots__ = ("_baseline", "_deadline", "_done", "_hub", "_job", "_key", "_loop", "_watch")

    def __init__(self, hub: ChangeHub, watch: _Watch, job: Job, baseline: datetime, deadline: float,
                 done: Callable[[Job | None], None]) -> None:  # fmt: skip
        self._hub = hub
        self._watch = watch
        self._job = job
        self._baseline = baseline
        self._deadline = deadline
        self._done = done
        self._key = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def _step(self, loop: asyncio.AbstractEventLoop) -> Job | HeldWait | None:
        """The job (None: deleted) once the wait is over, else self, armed on a new wake-up."""
        hub, watch, job, baseline = self._hub, self._watch, self._job, self._baseline
        while not (job.is_terminal or job.last_modified > baseline or hub._closing):
            seen = hub._catch_up(watch, job, baseline)
            if seen is None:
                hub._forget(watch)
                return None
            if seen is not job:
                job = seen
                continue
            if self._deadline - loop.time() <= 0:
                break
            wakeup: asyncio.Future[None] = loop.create_future()
            watch.wakeup = wakeup
            self._key = hub.deadlines.add(loop, self._deadline, wakeup)
            self._job = job
            self._loop = loop
            wakeup.add_done_callback(self._resume, context=_NO_CONTEXT)  # not the parking request's
            return self
        hub._forget(watch)
        return job

    def _resume(self, wakeup: asyncio.Future[None]) -> None:
        self._hub.deadlines.remove(self._key, wakeup)
        self._watch.wakeup = None
        loop = self._loop
        if loop is None:  # cancelled: the caller went away, nobody to answer
            return
        outcome = self._step(loop)
        if outcome is not self:
            self._done(outcome)  # type: ignore[arg-type]

    def cancel(self) -> None:
        """Stop waiting, with no answer (the caller has gone): ``done`` is not called."""
        self._loop = None
        wakeup = self._watch.wakeup
        self._hub._forget(self._watch)
        if wakeup is not None and not wakeup.done():
            wakeup.cancel()  # _resume removes its deadline, and stops there
