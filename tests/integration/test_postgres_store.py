"""PostgreSQL-only behaviour: several processes on one database (here, several store instances, each
with its own pool and LISTEN connection, as separate processes would have), migrations, reconnection.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tarefa.model import Job, JobState, new_job, utcnow
from tarefa.store import (
    Created,
    JobQuery,
    Outcome,
    ResourceBusy,
    SchemaTooNew,
    Store,
    StoreError,
    StoreUnavailable,
    open_store,
)
from tarefa.store.postgres import PostgresStore
from tarefa.store.postgres_sql import MIGRATIONS

if TYPE_CHECKING:
    from conftest import Recorder

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

Listen = Callable[[Store], "Recorder"]
Admin = Callable[[str], Any]
LEASE = 30.0


@asynccontextmanager
async def opened(url: str, **options: Any) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url, **{"pool_size": 3, **options})
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def make_job(operation: str = "thing.make", **kw: Any) -> Job:
    return new_job(operation, now=utcnow(), owner="alice", **kw)


async def test_open_store_builds_a_shared_store_from_the_url(postgres_url: str, postgres_admin: Admin) -> None:
    store = open_store(f"{postgres_url}?pool_size=3&application_name=tarefa-url-test")
    assert isinstance(store, PostgresStore) and store.exclusive is False and store.pool_size == 3
    await store.open()
    try:
        with postgres_admin(postgres_url) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tarefa-url-test'")
            assert row.fetchone() == (3 + 1,)  # the pool and the LISTEN connection
    finally:
        await store.close()


@pytest.mark.parametrize("query", ["pool_size=0", "pool_size=many", "heartbeat=-1", "no_such_option=1"])
def test_bad_url_options_are_refused_clearly(query: str) -> None:
    with pytest.raises(ValueError, match="option"):
        open_store(f"postgresql://postgres@127.0.0.1:5432/db?{query}")


async def test_unreachable_server_is_store_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/test", pool_timeout=1)
    with pytest.raises(StoreUnavailable):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.get_job("x")


async def test_driver_errors_become_store_errors(postgres_url: str) -> None:
    async with opened(postgres_url) as store:
        with pytest.raises(StoreError):
            await store.create_job(make_job(input={"text": "nul \x00 byte"}))  # jsonb refuses \u0000


# -- several processes --------------------------------------------------------------------------------


async def test_changes_through_one_store_reach_the_other_ones_listeners(postgres_url: str, listen: Listen) -> None:
    async with opened(postgres_url) as writer, opened(postgres_url) as reader:
        heard = listen(reader)
        job = (await writer.create_job(make_job())).job
        [running] = await writer.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        done = await writer.finish_job(job.id, "w1", Outcome(JobState.SUCCESS, result={"n": 1}))
        assert await writer.delete_job(job.id)
        await heard.wait_for(lambda: heard.of(job.id) == [job, running, done, None], what="each change")
        assert heard.foreign_threads == []


async def test_a_job_too_large_for_a_notification_is_read_by_the_listener(postgres_url: str, listen: Listen) -> None:
    async with opened(postgres_url) as writer, opened(postgres_url) as reader:
        heard = listen(reader)
        big = (await writer.create_job(make_job(input={"blob": "x" * 20_000}))).job
        small = (await writer.create_job(make_job())).job
        await heard.wait_for(lambda: heard.of(big.id) == [big] and heard.of(small.id) == [small])


async def test_a_large_purge_reaches_the_other_stores_listeners(postgres_url: str, listen: Listen) -> None:
    async with opened(postgres_url) as writer, opened(postgres_url) as reader:
        heard = listen(reader)
        jobs = [make_job() for _ in range(600)]
        await asyncio.gather(*(writer.create_job(job) for job in jobs))
        await asyncio.gather(*(writer.cancel_job(job.id) for job in jobs))
        assert await writer.purge_jobs(utcnow()) == 600
        deleted = {job.id for job in jobs}

        def all_heard() -> bool:
            return deleted <= {change.job_id for change in heard.changes if change.job is None}

        await heard.wait_for(all_heard, what="600 deletions")


async def test_own_changes_are_heard_once_not_echoed(postgres_url: str, listen: Listen) -> None:
    async with opened(postgres_url) as store:
        heard = listen(store)
        job = (await store.create_job(make_job())).job
        assert heard.of(job.id) == [job]  # before create_job returned
        await anyio.sleep(0.2)
        assert heard.of(job.id) == [job]


async def test_claims_from_two_stores_never_overlap(postgres_url: str) -> None:
    async with opened(postgres_url, pool_size=4) as one, opened(postgres_url, pool_size=4) as two:
        await asyncio.gather(*(one.create_job(make_job()) for _ in range(200)))
        claims: Counter[str] = Counter()

        async def claimer(store: PostgresStore, worker: str) -> None:
            while jobs := await store.claim_jobs(worker, operations=["thing.make"], limit=5, lease_seconds=LEASE):
                claims.update(job.id for job in jobs)

        async with anyio.create_task_group() as group:
            for n in range(4):
                group.start_soon(claimer, one, f"one-{n}")
                group.start_soon(claimer, two, f"two-{n}")
        assert len(claims) == 200 and set(claims.values()) == {1}


async def test_a_resource_key_is_held_across_stores(postgres_url: str) -> None:
    async with opened(postgres_url) as one, opened(postgres_url) as two:

        async def attempt(store: PostgresStore) -> Created | ResourceBusy:
            try:
                return await store.create_job(make_job(), resource_key="cluster:1")
            except ResourceBusy as busy:
                return busy

        results = await asyncio.gather(*(attempt(store) for store in (one, two) * 5))
        assert sum(isinstance(result, Created) for result in results) == 1


# -- migrations -------------------------------------------------------------------------------------------


async def test_stores_opening_together_migrate_once(fresh_postgres_url: str, postgres_admin: Admin) -> None:
    stores = [PostgresStore(fresh_postgres_url, pool_size=1) for _ in range(6)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        with postgres_admin(fresh_postgres_url) as conn:
            assert conn.execute("SELECT version FROM tarefa_schema_version").fetchall() == [(len(MIGRATIONS),)]
        assert await stores[0].upgrade() == len(MIGRATIONS)
        assert (await stores[1].create_job(make_job())).created
    finally:
        for store in stores:
            await store.close()


async def test_a_schema_newer_than_the_code_is_refused(fresh_postgres_url: str, postgres_admin: Admin) -> None:
    assert await PostgresStore(fresh_postgres_url).upgrade() == len(MIGRATIONS)
    with postgres_admin(fresh_postgres_url) as conn:
        conn.execute("UPDATE tarefa_schema_version SET version = 999")
    store = PostgresStore(fresh_postgres_url)
    with pytest.raises(SchemaTooNew, match="999"):
        await store.open()
    with pytest.raises(SchemaTooNew):
        await store.upgrade()


# -- reconnection -----------------------------------------------------------------------------------------


async def _wait(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


async def test_listener_reconnects_and_replays_what_it_missed(
    postgres_url: str, listen: Listen, postgres_admin: Admin
) -> None:
    async with opened(postgres_url, reconnect_delay=0.5) as listener, opened(postgres_url) as writer:
        heard = listen(listener)
        running = (await writer.create_job(make_job())).job
        await writer.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        ended = await writer.create_job(make_job("other"))
        cancelled = await writer.cancel_job(ended.job.id)
        await heard.wait_for(lambda: heard.heard(ended.job.id, lambda job: job == cancelled))

        with postgres_admin(postgres_url) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (listener.listen_backend_pid,))
        await _wait(lambda: not listener.listening.is_set(), "the listener to notice")
        reported = await writer.report_progress(running.id, "w1", message="while away", progress=10)
        created = (await writer.create_job(make_job("new"))).job
        assert await writer.delete_job(ended.job.id)
        assert not listener.listening.is_set(), "the changes were meant to happen while it was disconnected"

        await _wait(lambda: listener.reconnects == 1 and listener.listening.is_set(), "the reconnection")
        await heard.wait_for(lambda: heard.heard(running.id, lambda job: job == reported), what="the report")
        await heard.wait_for(lambda: heard.heard(created.id, lambda job: job == created), what="the new job")
        await heard.wait_for(lambda: heard.of(ended.job.id)[-1:] == [None], what="the deletion")

        after = (await writer.create_job(make_job("after"))).job  # LISTENing again
        await heard.wait_for(lambda: heard.of(after.id) == [after], what="a change after reconnecting")
        assert await listener.list_jobs(JobQuery(operation="new")) == [created]


async def test_a_store_survives_losing_every_connection(
    postgres_url: str, listen: Listen, postgres_admin: Admin
) -> None:
    name = "tarefa-cut-test"
    async with opened(postgres_url, application_name=name, reconnect_delay=0.05) as cut, opened(postgres_url) as other:
        heard = listen(cut)
        with postgres_admin(postgres_url) as conn:  # as a server restart would, for this store
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,))
        job = (await cut.create_job(make_job())).job  # the pool replaces its broken connections
        assert heard.of(job.id) == [job]
        await _wait(lambda: cut.reconnects == 1 and cut.listening.is_set(), "the reconnection")
        theirs = (await other.create_job(make_job())).job
        await heard.wait_for(lambda: heard.of(theirs.id)[-1:] == [theirs], what="a change after reconnecting")
