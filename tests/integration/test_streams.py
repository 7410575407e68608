"""The fan-out of committed events to open streams (:mod:`tarefa.streams`), on real stores.

An idle stream costs no store query; one change reaches every stream that shows it; a stream
subscribes before it reads, so nothing is lost between its backlog and the live events; on
PostgreSQL a transaction in flight that holds a lower ``seq`` holds back what every-job readers see.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
import pytest

from tarefa.engine import Engine
from tarefa.jobs import ANYONE, Viewer
from tarefa.model import Job, JobEvent, JobState, new_job, utcnow
from tarefa.store import EventQuery, JobChange, JobStore, Outcome
from tarefa.streams import EventStream

pytestmark = pytest.mark.anyio
LEASE = 30.0


@asynccontextmanager
async def engine_on(url: str) -> AsyncIterator[Engine]:
    engine = Engine(url, workers=0)
    async with engine.running():
        yield engine


def counting_reads(store: JobStore) -> list[int]:
    """Count the store's read programs from now on (``count[0]``)."""
    count = [0]
    read = store._read

    async def counted(program: Any) -> Any:
        count[0] += 1
        return await read(program)

    store._read = counted  # type: ignore[method-assign]
    return count


async def create(store: JobStore, owner: str = "alice", operation: str = "thing.make") -> Job:
    return (await store.create_job(new_job(operation, now=utcnow(), owner=owner))).job


async def take(stream: EventStream, n: int, timeout: float = 10.0) -> list[JobEvent]:
    got: list[JobEvent] = []
    with anyio.fail_after(timeout):
        async for event in stream:
            got.append(event)
            if len(got) == n:
                break
    return got


class Collector:
    """Reads a stream in a task, into ``events``."""

    def __init__(self, stream: EventStream) -> None:
        self.events: list[JobEvent] = []
        self.ended = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(stream))

    async def _run(self, stream: EventStream) -> None:
        try:
            async for event in stream:
                self.events.append(event)
        finally:
            self.ended.set()

    async def until(self, check: Callable[[list[JobEvent]], bool], timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while not check(self.events):
                await asyncio.sleep(0.005)


@pytest.mark.parametrize("url_kind", ["memory", "sqlite"])
async def test_one_change_reaches_every_stream_that_shows_it_with_no_store_query(url_kind: str, tmp_path: Any) -> None:
    url = "memory://" if url_kind == "memory" else f"sqlite:///{tmp_path}/s.db"
    async with engine_on(url) as engine:
        streams = engine.streams
        first = await create(engine.store)
        everyone = [Collector(await streams.follow_all(ANYONE, EventQuery())) for _ in range(100)]
        bobs = [Collector(await streams.follow_all(Viewer("bob"), EventQuery())) for _ in range(10)]
        jobs = [Collector(s) for s in [await streams.follow_job(ANYONE, first.id) for _ in range(10)] if s]
        for collector in everyone + jobs:
            await collector.until(lambda events: len(events) == 1)  # the backlog: the first job's event
        reads = counting_reads(engine.store)
        await asyncio.sleep(0.3)
        assert reads[0] == 0  # idle: no query
        second = await create(engine.store, owner="bob")
        [running] = await engine.store.claim_jobs("w", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        for collector in everyone:
            await collector.until(lambda events: len(events) == 3)
        for collector in bobs:
            await collector.until(lambda events: [e.job_id for e in events] == [second.id])
        await jobs[0].until(lambda events: len(events) == 2)
        assert reads[0] == 0  # the change fanned out: still no query
        assert streams.open == 120
        expected = [e.seq for e in (await engine.store.list_all_events(EventQuery())).events]
        assert all([e.seq for e in c.events] == expected for c in everyone)
        assert running.id == first.id and all(c.events[-1].state is JobState.RUNNING for c in jobs)
        await engine.store.finish_job(first.id, "w", Outcome(JobState.SUCCESS))
        for collector in jobs:  # a job's stream ends after its terminal event
            with anyio.fail_after(5):
                await collector.ended.wait()
        engine.streams.close()  # a graceful stop ends the others
        for collector in everyone + bobs:
            with anyio.fail_after(5):
                await collector.ended.wait()
        assert streams.open == 0


async def test_a_stream_that_falls_behind_reads_from_the_store_and_loses_nothing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tarefa.streams.MAX_PENDING", 5)
    async with engine_on(f"sqlite:///{tmp_path}/s.db") as engine:
        stream = await engine.streams.follow_all(ANYONE, EventQuery())
        created = [await create(engine.store) for _ in range(30)]  # nobody reads: it overflows
        got = await take(stream, 30)
        assert [e.job_id for e in got] == [job.id for job in created]
        stream.close()


async def test_a_deleted_job_ends_its_stream_and_an_ended_job_has_nothing_to_stream(tmp_path: Any) -> None:
    async with engine_on(f"sqlite:///{tmp_path}/s.db") as engine:
        job = await create(engine.store)
        await engine.store.claim_jobs("w", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        await engine.store.finish_job(job.id, "w", Outcome(JobState.SUCCESS))
        history = await engine.store.list_events(job.id) or []
        assert await engine.streams.follow_job(ANYONE, job.id, after=history[-1].seq) is None
        other = await create(engine.store)
        [claimed] = await engine.store.claim_jobs("w", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        stream = await engine.streams.follow_job(ANYONE, other.id)
        assert stream is not None
        collector = Collector(stream)
        await collector.until(lambda events: len(events) == 2)
        await engine.store.cancel_job(other.id)
        await collector.until(lambda events: len(events) == 3)
        # what the store announces when a job is deleted (or purged) ends its streams
        engine.streams.publish([JobChange(other.id, None)])
        with anyio.fail_after(5):
            await collector.ended.wait()
        assert not collector.events[-1].is_terminal and claimed.id == other.id
        # a stream that finds its job gone while it reads ends too
        await engine.store.finish_job(other.id, "w", Outcome(JobState.FAILURE, error_code="x", error_message="y"))
        late = await engine.streams.follow_job(ANYONE, other.id, after=collector.events[0].seq)
        assert late is not None and await engine.store.delete_job(other.id)
        assert len(await take(late, 10, timeout=5)) == 3  # read at open; then it ends, gone


@pytest.mark.postgres
async def test_postgres_holds_back_events_behind_a_transaction_in_flight_with_a_lower_seq(
    postgres_url: str,
) -> None:
    async with engine_on(f"{postgres_url}?pool_size=3") as engine:
        store = engine.store
        before = await create(store)
        stream = await engine.streams.follow_all(ANYONE, EventQuery())
        collector = Collector(stream)
        await collector.until(lambda events: len(events) == 1)
        # another process's transaction takes a seq and stays open
        with psycopg.connect(postgres_url) as other:
            other.execute(
                "INSERT INTO tarefa_job_events (job_id, time, state, message, operation, owner) "
                "VALUES (%s, now(), 'running', 'held', 'thing.make', 'alice')",
                (before.id,),
            )
            later = await create(store)  # commits with a higher seq
            page = asyncio.get_running_loop().create_task(store.list_all_events(EventQuery()))
            await asyncio.sleep(0.5)
            assert not page.done()  # it waits for the transaction in flight
            assert [e.job_id for e in collector.events] == [before.id]  # so does the stream
            other.commit()
        with anyio.fail_after(10):
            found = (await page).events
        assert [e.message for e in found] == ["Queued", "held", "Queued"]
        assert [e.job_id for e in found] == [before.id, before.id, later.id]
        # the stream waited too, and never jumped past the held event
        await collector.until(lambda events: len(events) == 3)
        assert collector.events == found
        stream.close()


@pytest.mark.postgres
async def test_postgres_live_and_resumed_streams_of_every_job_under_concurrent_writers(postgres_url: str) -> None:
    """Several stores on one database (as several processes would have), each writing at once."""
    url = f"{postgres_url}?pool_size=4"
    async with engine_on(url) as reader, engine_on(url) as second, engine_on(url) as third:
        live = Collector(await reader.streams.follow_all(ANYONE, EventQuery()))
        followed: dict[str, Collector] = {}

        async def write(store: JobStore, n: int) -> None:
            for i in range(n):
                job = await create(store, operation=f"op{id(store) % 7}")
                if i % 4 == 0:  # a job's stream, in the reading process, as its job changes elsewhere
                    stream = await reader.streams.follow_job(ANYONE, job.id)
                    assert stream is not None
                    followed[job.id] = Collector(stream)
                await store.cancel_job(job.id)

        writers = [write(engine.store, 40) for engine in (reader, second, third) for _ in range(4)]
        await asyncio.gather(*writers)
        every = (await reader.store.list_all_events(EventQuery(limit=10_000))).events
        assert len(every) == 3 * 4 * 40 * 2
        with contextlib.suppress(TimeoutError):
            await live.until(lambda events: len(events) >= len(every), timeout=10)
        missed = sorted({e.seq for e in every} - {e.seq for e in live.events})
        assert not missed, (missed, len(live.events), [e for e in every if e.seq in missed][:3])
        assert [e.seq for e in live.events] == [e.seq for e in every]
        for job_id, collector in followed.items():  # each ends after its terminal event
            with anyio.fail_after(10):
                await collector.ended.wait()
            assert collector.events == await reader.store.list_events(job_id)
