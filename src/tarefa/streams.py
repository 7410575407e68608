"""Event streams (SPEC §10): a job's history, or every visible job's, read and then followed live.

:class:`EventStreams` listens to the store's committed changes (register :meth:`publish` as a store
listener) and fans each event out to every open stream that shows it. A stream that waits costs no
store query and no CPU: it is a queue and a future, filled by the listener.

No lost event and none twice: a stream subscribes *before* it reads the stored events, keeps the
``seq`` up to which it is complete (its *mark*), and takes only what lies beyond it.

Order. Where events commit in ``seq`` order (SQLite, memory: one writer), a change's own event is
delivered as it is. On PostgreSQL, concurrent transactions commit out of ``seq`` order: a stream of
every job that sent event 11 as soon as it was heard, and then 10, would make a client resuming
after 11 miss 10. There, one *sequencer* per process turns the changes heard into settled pages
of the store (:meth:`~tarefa.store.JobStore.list_all_events`: nothing below them can still
commit), one read per burst of changes whatever the number of streams, and hands each page to
every stream with the range it covers. A stream whose mark is below a range's start reads the gap
from the store itself. One job's changes are serialized by its row lock, so a stream of one job
takes the events of its job's changes as they come, on every store.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from .jobs import JobNotFound, Jobs, Viewer
from .model import JobEvent
from .store import EventQuery, JobChange, JobStore, StoreError

log = logging.getLogger("tarefa.streams")

#: Events read from the store at once by a stream catching up.
PAGE = 500
#: Deliveries a stream may hold unread; beyond, it drops them and reads from the store instead.
MAX_PENDING = 10_000
#: Encodings of the latest events kept for the streams that send them (see EventStreams.encoded).
ENCODED_KEPT = 4096
#: Seconds between two comment lines of an idle stream (SPEC §10: at most 15).
DEFAULT_HEARTBEAT = 15.0


@dataclass(frozen=True, slots=True)
class _Delivery:
    """Events for a stream, complete for ``since < seq <= upto`` (``since`` None: contiguous
    with what came before, as on a store that commits in ``seq`` order)."""

    events: Sequence[JobEvent]
    upto: int
    since: int | None = None


_STALE = _Delivery((), 0)  # some events may be missing: read from the store after the mark


class Subscription:
    """What one open stream has been handed and not yet sent (filled by :class:`EventStreams`)."""

    __slots__ = ("_pending", "_wakeup", "ended", "job_id", "query")

    def __init__(self, job_id: str | None, query: EventQuery) -> None:
        self.job_id = job_id
        self.query = query
        self.ended = False
        self._pending: deque[_Delivery] = deque()
        self._wakeup: asyncio.Future[None] | None = None

    def offer(self, delivery: _Delivery) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.clear()
            delivery = _STALE
        self._pending.append(delivery)
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def take(self) -> list[_Delivery]:
        taken = list(self._pending)
        self._pending.clear()
        return taken

    async def wait(self) -> None:
        """Until something is handed to the stream, or it is ended."""
        if self._pending or self.ended:
            return
        self._wakeup = asyncio.get_running_loop().create_future()
        try:
            await self._wakeup
        finally:
            self._wakeup = None


class EventStreams:
    """The open event streams of one process and the fan-out to them (module doc)."""

    def __init__(self, store: Callable[[], JobStore], jobs: Jobs) -> None:
        self._store = store
        self._jobs = jobs
        self._by_job: dict[str, set[Subscription]] = {}
        self._global: set[Subscription] = set()
        self._closing = False
        self._ordered = True  # the store commits events in seq order (set by reopen)
        self._sequencer = _Sequencer(store, self._global)
        #: Seconds between comment lines on an idle stream (``TAREFA_STREAM_HEARTBEAT``).
        self.heartbeat = _heartbeat_from_env()
        self._encoded: dict[int, bytes] = {}

    @property
    def open(self) -> int:
        """How many streams are open in this process."""
        return sum(len(subs) for subs in self._by_job.values()) + len(self._global)

    def reopen(self, store: JobStore) -> None:
        """Take streams again, from ``store`` (a started engine); :meth:`close` ends them."""
        self._closing = False
        self._encoded.clear()  # another store (memory://) may give the same seqs again
        self._ordered = store.exclusive  # one process, one writer: seq order is commit order
        self._sequencer.ordered = store.exclusive

    def close(self) -> None:
        """Graceful stop: every open stream ends now (a client resumes later with its last id)."""
        self._closing = True
        for sub in (*self._global, *(s for subs in self._by_job.values() for s in subs)):
            sub.end()

    def encoded(self, event: JobEvent, encode: Callable[[JobEvent], bytes]) -> bytes:
        """``encode(event)``, done once for every stream the event goes to (they send it at
        about the same time): the latest :data:`ENCODED_KEPT` encodings are kept, by ``seq``."""
        found = self._encoded.get(event.seq)
        if found is None:
            found = self._encoded[event.seq] = encode(event)
            if len(self._encoded) > ENCODED_KEPT:
                del self._encoded[next(iter(self._encoded))]
        return found

    # -- the fan-out --------------------------------------------------------------------------------

    def publish(self, changes: Sequence[JobChange]) -> None:
        """Store listener: hand each committed event to every stream that shows it."""
        ordered = self._ordered
        for change in changes:
            self._to_job_streams(change)
            if ordered and self._global:
                self._to_global_streams(change)
        if not ordered and self._global:
            self._sequencer.poke()

    def _to_job_streams(self, change: JobChange) -> None:
        for sub in self._by_job.get(change.job_id, ()):
            if change.job is None:
                sub.end()
            elif change.event is None or not change.event.seq:
                sub.offer(_STALE)  # a change heard without its event (too large to announce)
            else:
                sub.offer(_Delivery((change.event,), change.event.seq))

    def _to_global_streams(self, change: JobChange) -> None:
        event = change.event
        if change.job is None:
            return
        if event is None or not event.seq:
            for sub in self._global:
                sub.offer(_STALE)
            return
        delivery = _Delivery((event,), event.seq)
        for sub in self._global:
            if sub.query.shows(event):
                sub.offer(delivery)

    def _add(self, sub: Subscription) -> None:
        if sub.job_id is None:
            self._global.add(sub)
        else:
            self._by_job.setdefault(sub.job_id, set()).add(sub)
        if self._closing:
            sub.end()

    def _remove(self, sub: Subscription) -> None:
        if sub.job_id is None:
            self._global.discard(sub)
            if not self._global:
                self._sequencer.reset()
            return
        subs = self._by_job.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_job[sub.job_id]

    # -- opening streams ----------------------------------------------------------------------------

    async def follow_job(self, viewer: Viewer, job_id: str, *, after: int = 0) -> EventStream | None:
        """A stream of the job's events after ``after``, ending after its terminal event;
        :class:`~tarefa.jobs.JobNotFound`; None if the job has ended and nothing is left to send."""
        sub = Subscription(job_id, EventQuery(owner=viewer.owner_filter))
        self._add(sub)
        try:
            first = await self._jobs.history(viewer, job_id, after=after, limit=PAGE)
            if not first and (await self._jobs.get(viewer, job_id)).is_terminal:
                self._remove(sub)
                return None
        except BaseException:
            self._remove(sub)
            raise
        return EventStream(self, sub, viewer, after, first)

    async def follow_all(self, viewer: Viewer, query: EventQuery) -> EventStream:
        """A stream of the events of every job ``viewer`` may see that ``query`` shows, after
        ``query.after``; it ends only when the server stops (or the client goes)."""
        query = EventQuery(viewer.owner_filter, query.states, query.operation, query.after, PAGE)
        sub = Subscription(None, query)
        self._add(sub)
        self._sequencer.poke()
        return EventStream(self, sub, viewer, query.after, None)

    async def page_all(self, viewer: Viewer, query: EventQuery) -> list[JobEvent]:
        """One page of the events of every job ``viewer`` may see (``GET /api/events``)."""
        query = EventQuery(viewer.owner_filter, query.states, query.operation, query.after, query.limit)
        return (await self._store().list_all_events(query)).events


class EventStream:
    """One open stream: iterate it for its events, in ``seq`` order, each once; close it when done."""

    def __init__(
        self, streams: EventStreams, sub: Subscription, viewer: Viewer, mark: int, first: list[JobEvent] | None
    ) -> None:
        self._streams = streams
        self._sub = sub
        self._viewer = viewer
        self._mark = mark  # complete up to this seq
        self._first = first
        self._closed = False

    @property
    def job_id(self) -> str | None:
        return self._sub.job_id

    def close(self) -> None:
        """Stop following (idempotent)."""
        if not self._closed:
            self._closed = True
            self._streams._remove(self._sub)

    async def __aiter__(self) -> AsyncIterator[JobEvent]:
        try:
            async for event in self._events():
                yield event
                if self._sub.job_id is not None and event.is_terminal:
                    return
        finally:
            self.close()

    async def _events(self) -> AsyncIterator[JobEvent]:
        first, self._first = self._first, None
        if first is not None:  # a job's stream read its first page when it opened
            for event in self._take(first, first[-1].seq if first else self._mark):
                yield event
        if first is None or len(first) >= PAGE:
            async for event in self._catch_up():
                yield event
        while not self._sub.ended:
            await self._sub.wait()
            for delivery in self._sub.take():
                if delivery is _STALE or (delivery.since is not None and delivery.since > self._mark):
                    async for event in self._catch_up():
                        yield event
                else:
                    for event in self._take(delivery.events, delivery.upto):
                        yield event

    def _take(self, events: Sequence[JobEvent], upto: int) -> list[JobEvent]:
        new = [event for event in events if event.seq > self._mark]
        self._mark = max(self._mark, upto)
        return new

    async def _catch_up(self) -> AsyncIterator[JobEvent]:
        """Read from the store what lies after the mark, page by page."""
        while not self._sub.ended:
            try:
                events, upto = await self._read()
            except JobNotFound:  # deleted meanwhile: its stream ends
                self._sub.end()
                return
            for event in self._take(events, upto):
                yield event
            if len(events) < PAGE:
                return

    async def _read(self) -> tuple[list[JobEvent], int]:
        job_id = self._sub.job_id
        if job_id is not None:
            events = await self._streams._jobs.history(self._viewer, job_id, after=self._mark, limit=PAGE)
            return events, events[-1].seq if events else self._mark
        query = self._sub.query
        page = await self._streams._store().list_all_events(
            EventQuery(query.owner, query.states, query.operation, self._mark, PAGE)
        )
        return page.events, page.covered


class _Sequencer:
    """On a store whose transactions commit out of ``seq`` order: turns the changes heard into
    settled pages of every job's events, handed to every stream of every job (module doc)."""

    def __init__(self, store: Callable[[], JobStore], streams: set[Subscription]) -> None:
        self._store = store
        self._streams = streams
        self._horizon: int | None = None
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self.ordered = True

    def poke(self) -> None:
        if self.ordered:
            return
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tarefa-event-sequencer")

    def reset(self) -> None:
        """No stream of every job is open: forget the horizon (no read until one opens)."""
        self._horizon = None

    async def _run(self) -> None:
        while self._dirty and self._streams:
            self._dirty = False
            try:
                await self._advance()
            except StoreError as exc:
                log.warning("cannot read the events to stream yet: %s", exc)
                self._dirty = True
                await asyncio.sleep(0.5)
            except RuntimeError:  # the engine stopped meanwhile
                return

    async def _advance(self) -> None:
        store = self._store()
        if self._horizon is None:
            covered = (await store.list_all_events(EventQuery(limit=0))).covered
            if self._streams:
                self._horizon = covered
            return
        while self._streams and self._horizon is not None:
            since = self._horizon
            page = await store.list_all_events(EventQuery(after=since, limit=PAGE))
            if self._horizon != since or page.covered <= since:  # reset meanwhile, or nothing new
                return
            self._horizon = page.covered
            for sub in tuple(self._streams):
                shown = [event for event in page.events if sub.query.shows(event)]
                sub.offer(_Delivery(shown, page.covered, since))
            if len(page.events) < PAGE:
                return


def _heartbeat_from_env() -> float:
    text = os.environ.get("TAREFA_STREAM_HEARTBEAT")
    if text is None:
        return DEFAULT_HEARTBEAT
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"TAREFA_STREAM_HEARTBEAT={text!r} is not a number of seconds") from None
    if not 0 < value <= DEFAULT_HEARTBEAT:
        raise ValueError(f"TAREFA_STREAM_HEARTBEAT={text!r}: more than 0 and at most 15 seconds")
    return value
