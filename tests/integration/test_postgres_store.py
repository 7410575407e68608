"""PostgreSQL-only behaviour: several processes on one database (here, several store instances, each
with its own pool and LISTEN connection, as separate processes would have), migrations, reconnection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tarefa import model
from tarefa.model import Job, JobState, event_of, new_job, utcnow
from tarefa.store import (
    Created,
    Idempotency,
    IdempotencyMismatch,
    JobChange,
    JobQuery,
    Outcome,
    ResourceBusy,
    SchemaTooNew,
    Store,
    StoreError,
    StoreUnavailable,
    open_store,
)
from tarefa.store.base import Claim
from tarefa.store.postgres import PostgresStore
from tarefa.store.postgres_listen import announcement, encode_changes
from tarefa.store.postgres_sql import MIGRATIONS
from tarefa.store.steps import numbered

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


# -- group commit -----------------------------------------------------------------------------------------


async def test_concurrent_writes_share_one_commit_and_one_announcement(postgres_url: str, listen: Listen) -> None:
    async with opened(postgres_url) as writer, opened(postgres_url) as reader:
        own, theirs = listen(writer), listen(reader)
        jobs = [make_job() for _ in range(11)]  # small enough for one notification payload
        jobs.append(make_job(input={"text": "it's a \\ \"quoted\" é ✓ \n line; NOTIFY x, 'y'"}))
        results = await asyncio.gather(*(writer.create_job(job) for job in jobs))
        assert [result.job for result in results] == jobs
        assert len(own.batches) == 1 and [change.job for change in own.batches[0]] == jobs  # before they returned
        await theirs.wait_for(lambda: len(theirs.changes) == len(jobs), what="the batch")
        assert len(theirs.batches) == 1 and [change.job for change in theirs.batches[0]] == jobs  # one NOTIFY


async def test_a_failing_call_neither_fails_nor_undoes_the_others_of_its_batch(
    postgres_url: str, listen: Listen
) -> None:
    async with opened(postgres_url) as store:
        heard = listen(store)
        first = (await store.create_job(make_job(), resource_key="cluster:1")).job
        running = (await store.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE))[0]
        good = [make_job() for _ in range(6)]
        calls = [
            store.create_job(good[0]),
            store.create_job(make_job(input={"text": "nul \x00 byte"})),  # the driver refuses it
            store.create_job(good[1]),
            store.create_job(make_job(), resource_key="cluster:1"),  # busy
            store.report_progress(running.id, "w1", message="out of range", progress=101),  # ValueError
            store.create_job(good[2]),
            store.report_progress(running.id, "w1", message="fine", progress=50),
            *(store.create_job(job) for job in good[3:]),
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[1], StoreError) and not isinstance(results[1], StoreUnavailable)
        assert isinstance(results[3], ResourceBusy) and results[3].job_id == first.id
        assert isinstance(results[4], ValueError)
        reported = results[6]
        assert isinstance(reported, Job) and (reported.message, reported.progress) == ("fine", 50)
        created = [result.job for result in results if isinstance(result, Created)]
        assert created == good
        assert {job.id for job in await store.list_jobs(JobQuery(limit=100))} == {first.id, *(job.id for job in good)}
        assert await store.get_job(running.id) == reported
        assert [change.job for batch in heard.batches[-1:] for change in batch] == [*good[:3], reported, *good[3:]]


async def test_a_call_waiting_for_a_lock_does_not_hold_up_its_batch(postgres_url: str, postgres_admin: Admin) -> None:
    async with opened(postgres_url) as store:
        locked = (await store.create_job(make_job())).job
        with postgres_admin(postgres_url) as other:
            other.execute("BEGIN")
            other.execute("SELECT id FROM tarefa_jobs WHERE id = %s FOR UPDATE", (locked.id,))  # held for now
            cancel = asyncio.ensure_future(store.cancel_job(locked.id))
            others = [make_job() for _ in range(5)]
            with anyio.fail_after(5):
                created = await asyncio.gather(*(store.create_job(job) for job in others))
            assert [result.job for result in created] == others
            await anyio.sleep(0.5)
            assert not cancel.done()  # alone, it waits for the lock as long as needed
            other.execute("COMMIT")
        with anyio.fail_after(5):
            cancelled = await cancel
        assert cancelled is not None and cancelled.state is JobState.FAILURE


async def test_a_lone_call_waiting_for_a_lock_does_not_hold_up_the_writes_after_it(
    postgres_url: str, postgres_admin: Admin
) -> None:
    async with opened(postgres_url) as store:
        locked = (await store.create_job(make_job())).job
        with postgres_admin(postgres_url) as other:
            other.execute("BEGIN")
            other.execute("SELECT id FROM tarefa_jobs WHERE id = %s FOR UPDATE", (locked.id,))
            cancel = asyncio.ensure_future(store.cancel_job(locked.id))
            await anyio.sleep(0.05)  # the writer has taken it, alone
            with anyio.fail_after(5):
                assert (await store.create_job(make_job())).created
            assert not cancel.done()
            other.execute("COMMIT")
        with anyio.fail_after(5):
            cancelled = await cancel
        assert cancelled is not None and cancelled.state is JobState.FAILURE


async def test_closing_answers_a_write_still_waiting_for_a_lock(postgres_url: str, postgres_admin: Admin) -> None:
    store = PostgresStore(postgres_url, pool_size=2, pool_timeout=1)
    await store.open()
    try:
        locked = (await store.create_job(make_job())).job
        with postgres_admin(postgres_url) as other:
            other.execute("BEGIN")
            other.execute("SELECT id FROM tarefa_jobs WHERE id = %s FOR UPDATE", (locked.id,))
            cancel = asyncio.ensure_future(store.cancel_job(locked.id))
            await anyio.sleep(0.5)
            with anyio.fail_after(5):
                await store.close()
            with pytest.raises(StoreError, match="closed"):
                await cancel
            other.execute("ROLLBACK")
    finally:
        await store.close()


async def test_writes_from_two_stores_locking_rows_in_opposite_orders_all_end(postgres_url: str) -> None:
    async with opened(postgres_url) as one, opened(postgres_url) as two:
        jobs = [(await one.create_job(make_job())).job for _ in range(20)]
        running = await one.claim_jobs("w1", operations=["thing.make"], limit=20, lease_seconds=LEASE)
        assert len(running) == 20

        async def report(store: PostgresStore, order: list[Job], text: str) -> list[Job | None]:
            return await asyncio.gather(
                *(store.report_progress(job.id, "w1", message=text, progress=None) for job in order)
            )

        with anyio.fail_after(30):
            forward, backward = await asyncio.gather(report(one, jobs, "one"), report(two, jobs[::-1], "two"))
        reports = [*forward, *backward]
        assert all(isinstance(job, Job) for job in reports)
        for job in jobs:
            latest = max((r for r in reports if r is not None and r.id == job.id), key=lambda r: r.last_modified)
            assert await one.get_job(job.id) == latest


async def test_a_write_after_close_is_refused_and_a_closed_store_can_reopen(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    job = (await store.create_job(make_job())).job
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.create_job(make_job())
    await store.open()
    try:
        assert await store.get_job(job.id) == job
        assert (await store.create_job(make_job())).created
    finally:
        await store.close()


async def test_reads_and_writes_go_on_at_once_after_every_connection_was_lost(
    postgres_url: str, postgres_admin: Admin
) -> None:
    name = "tarefa-cut-reads-test"
    async with opened(postgres_url, application_name=name, pool_size=4) as store:
        job = (await store.create_job(make_job())).job
        with postgres_admin(postgres_url) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,))
        assert await store.get_job(job.id) == job  # the pool replaces its broken connections
        assert await store.list_jobs(JobQuery()) == [job]
        claimed = await store.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        assert [c.id for c in claimed] == [job.id]


def test_the_writers_option_must_be_a_positive_number() -> None:
    with pytest.raises(ValueError, match="writers"):
        open_store("postgresql://postgres@127.0.0.1:5432/db?writers=0")
    store = open_store("postgresql://postgres@127.0.0.1:5432/db?writers=2")
    assert isinstance(store, PostgresStore)


async def test_a_long_poll_from_a_baseline_reads_no_row_the_hub_has_and_wakes_on_another_stores_change(
    postgres_url: str,
) -> None:
    from tarefa.jobs import ANYONE, Jobs
    from tarefa.operations import OperationRegistry
    from tarefa.waiting import ChangeHub

    hub = ChangeHub()
    hub.remember(False)  # as the engine does for a shared store
    async with opened(postgres_url) as api, opened(postgres_url) as worker:
        api.add_listener(hub.publish)
        jobs = Jobs(lambda: api, OperationRegistry(), hub)
        reads: list[str] = []
        original = api.get_job

        async def counted(job_id: str, owner: str | None = None) -> Job | None:
            reads.append(job_id)
            return await original(job_id, owner)

        api.get_job = counted  # type: ignore[method-assign]
        job = (await api.create_job(make_job())).job
        assert (await jobs.get(ANYONE, job.id)) == job and reads == [job.id]  # a plain read: the store

        poll = asyncio.create_task(jobs.wait_for_change(ANYONE, job.id, baseline=job.last_modified, timeout=10))
        await asyncio.sleep(0.1)
        assert not poll.done()
        # another process's change
        claimed = await worker.claim_jobs("w2", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        woke = await asyncio.wait_for(poll, 5)
        assert woke.state is JobState.RUNNING and woke == claimed[0]
        assert reads == [job.id]  # the poll waited on the hub's copy: no read

        # The caller holds a newer state than the hub's copy (as if the hub had not heard the
        # claim yet): the store is read.
        hub.publish([JobChange(job.id, None)])  # forget the copy
        hub.publish([JobChange(job.id, job)])  # the hub is one change behind
        assert (await jobs.wait_for_change(ANYONE, job.id, baseline=woke.last_modified, timeout=0)) == woke
        assert reads == [job.id, job.id]


async def test_while_the_listen_connection_is_down_a_long_poll_reads_the_store(
    postgres_url: str, postgres_admin: Admin
) -> None:
    from tarefa.jobs import ANYONE, Jobs
    from tarefa.operations import OperationRegistry
    from tarefa.waiting import ChangeHub

    hub = ChangeHub()
    hub.remember(False)
    async with opened(postgres_url, reconnect_delay=5) as api, opened(postgres_url) as worker:
        api.add_listener(hub.publish)
        jobs = Jobs(lambda: api, OperationRegistry(), hub)
        job = (await api.create_job(make_job())).job
        assert hub.known_since(job.id, job.last_modified) == job
        with postgres_admin(postgres_url) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (api.listen_backend_pid,))
        await _wait(lambda: not api.listening.is_set(), "the listener to notice")
        [claimed] = await worker.claim_jobs("w2", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        assert hub.known_since(job.id, job.last_modified) == job  # the hub cannot know of the claim
        assert not api.listening.is_set(), "the claim was meant to happen while it was disconnected"
        # Not a wait on the stale copy until the reconnection: the store has the claim.
        woke = await asyncio.wait_for(jobs.wait_for_change(ANYONE, job.id, baseline=job.last_modified, timeout=10), 2)
        assert woke == claimed


# -- one-statement writes -----------------------------------------------------------------------------


async def test_a_lone_write_announces_itself_with_its_events_number(postgres_url: str, listen: Listen) -> None:
    async with opened(postgres_url) as writer, opened(postgres_url) as reader:
        own, theirs = listen(writer), listen(reader)
        job = (await writer.create_job(make_job())).job
        [running] = await writer.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        done = await writer.finish_job(job.id, "w1", Outcome(JobState.SUCCESS, result={"n": 1}))
        await writer.set_answer_status(job.id, 200)
        events = await writer.list_events(job.id)
        assert events is not None and [event.state for event in events] == ["queued", "running", "success"]
        await theirs.wait_for(lambda: len(theirs.of(job.id)) == 3, what="the three changes")
        for heard in (own, theirs):
            assert heard.of(job.id) == [job, running, done]
            assert [change.event for change in heard.changes if change.job_id == job.id] == events
        assert (await writer.replay_idempotent("alice", Idempotency("k", "h"))) is None


async def test_an_end_after_a_change_made_elsewhere_applies_to_the_job_as_it_is_now(postgres_url: str) -> None:
    async with opened(postgres_url) as worker, opened(postgres_url) as api:
        jobs = [(await api.create_job(make_job())).job for _ in range(3)]
        claimed = await worker.claim_jobs("w1", operations=["thing.make"], limit=3, lease_seconds=LEASE)
        assert {job.id for job in claimed} == {job.id for job in jobs}
        cancelled = await api.cancel_job(claimed[0].id)  # a visible change the worker did not make
        assert cancelled is not None and cancelled.cancel_requested
        assert await api.renew_leases("w1", [claimed[1].id], 2 * LEASE) == {claimed[1].id}  # not known to the worker
        renewed = await api.get_job(claimed[1].id)
        assert renewed is not None
        success = Outcome(JobState.SUCCESS, result={"ok": True})
        for before in (cancelled, renewed, claimed[2]):
            ended = await worker.finish_job(before.id, "w1", success)
            assert ended is not None and ended == await api.get_job(before.id)
            assert ended.state is JobState.SUCCESS and ended.result == {"ok": True}
            assert ended.cancel_requested == before.cancel_requested and ended.attempts == before.attempts
            assert ended.last_modified > before.last_modified and ended.lease_owner is None
        assert await worker.finish_job(claimed[2].id, "w1", success) is None  # ended: no longer held
        assert await worker.finish_job(claimed[2].id, "w2", success) is None


async def test_an_end_from_a_worker_that_lost_the_job_changes_nothing(postgres_url: str) -> None:
    async with opened(postgres_url) as worker, opened(postgres_url) as other:
        job = (await other.create_job(make_job())).job
        assert len(await worker.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)) == 1
        [lost] = await other.recover_jobs(expired_only=False)  # as if its lease had run out
        assert lost.id == job.id and lost.state is JobState.FAILURE
        assert await worker.finish_job(job.id, "w1", Outcome(JobState.SUCCESS, result=1)) is None
        assert await other.get_job(job.id) == lost


async def test_a_plain_insert_that_conflicts_takes_the_full_rule(postgres_url: str) -> None:
    async with opened(postgres_url) as store:
        key = Idempotency(f"key-{utcnow().timestamp()}", "hash")
        first = await store.create_job(make_job(), idempotency=key)
        again = await store.create_job(make_job(), idempotency=key)
        assert first.created and not again.created and again.job == first.job
        with pytest.raises(IdempotencyMismatch):
            await store.create_job(make_job(), idempotency=Idempotency(key.key, "other"))
        holder = await store.create_job(make_job(), resource_key=f"res-{first.job.id}")
        with pytest.raises(ResourceBusy) as busy:
            await store.create_job(make_job(), resource_key=f"res-{first.job.id}")
        assert busy.value.job_id == holder.job.id
        with pytest.raises(StoreError, match="exists"):
            await store.create_job(dataclasses.replace(first.job, input={"other": 1}))
        # the same job again: an attempt whose answer was lost, found inserted
        assert await store.create_job(first.job) == Created(first.job, created=True)


def test_a_one_job_announcement_is_the_payload_the_batch_would_send() -> None:
    job = make_job(input={"text": 'é ✓ " \\ \n'})
    parts = announcement("origin1", job)
    assert parts is not None
    event = numbered([event_of(job)], [12345])[0]
    assert (
        parts["announce_before"] + "12345" + parts["announce_after"]
        == encode_changes("origin1", [JobChange(job.id, job, event)])[0]
    )
    assert announcement("origin1", make_job(input={"blob": "x" * 20_000})) is None


async def test_a_claim_in_one_statement_is_the_models_start(postgres_url: str, listen: Listen) -> None:
    async with opened(postgres_url) as worker, opened(postgres_url) as api:
        heard = listen(api)
        ahead = utcnow() + timedelta(hours=1)  # a job stamped by a clock ahead of this one
        jobs = [
            (await api.create_job(make_job())).job,
            (await api.create_job(new_job("thing.make", now=ahead, owner="bob", input={"q": [1, 2.5, None]}))).job,
            (await api.create_job(make_job(input={"blob": "x" * 20_000}))).job,  # too large to notify
        ]
        before = utcnow()
        for job in sorted(jobs, key=lambda job: (job.create_time, job.id)):
            [started] = await worker.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)
            assert started == await api.get_job(job.id)
            stamp = max(started.last_modified, before)
            expected = model.start(job, now=stamp, worker="w1", lease_expires=started.lease_expires)
            assert started == expected and started.lease_expires is not None
            assert started.lease_expires - started.last_modified <= timedelta(seconds=LEASE)
            await heard.wait_for(lambda job=job: len(heard.of(job.id)) == 2, what="the claim")
            assert heard.of(job.id)[-1] == started
        assert jobs[1].last_modified == ahead and heard.of(jobs[1].id)[-1].last_modified == ahead + timedelta(
            microseconds=1
        )
        assert await worker.claim_jobs("w1", operations=["thing.make"], limit=5, lease_seconds=LEASE) == []


async def test_a_claimed_job_that_wants_a_callback_for_its_start_gets_its_outbox_row(postgres_url: str) -> None:
    async with opened(postgres_url) as store:
        plain = (await store.create_job(make_job())).job
        calling = (await store.create_job(make_job(callback={"url": "https://example.com/cb", "events": "all"}))).job
        claimed = await store.claim_jobs("w1", operations=["thing.make"], limit=5, lease_seconds=LEASE)
        assert [job.id for job in claimed] == [plain.id, calling.id]
        deliveries = await store.claim_callbacks("cb", limit=10, lease_seconds=LEASE)
        assert [(d.job_id, d.seq) for d in deliveries] == [(calling.id, d.seq) for d in deliveries]
        events = await store.list_events(calling.id)
        assert events is not None and sorted(d.seq for d in deliveries) == [e.seq for e in events]  # queued, running


async def test_a_requeued_job_is_claimed_with_its_next_attempt(postgres_url: str) -> None:
    async with opened(postgres_url) as store:
        job = (await store.create_job(make_job(max_attempts=2))).job
        await store.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        [requeued] = await store.recover_jobs(expired_only=False)
        assert requeued.state is JobState.QUEUED and requeued.attempts == 1
        [again] = await store.claim_jobs("w2", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        assert again.attempts == 2 and again.lease_owner == "w2" and again == await store.get_job(job.id)


async def test_an_end_by_answer_by_records_200_across_processes_unless_the_call_said_202(postgres_url: str) -> None:
    """``create_job(answer_by=...)``: the end (another process's store here) records 200 as the
    first answer's status in its own statement when it comes by that instant; a 202 recorded by
    the call first is for good; an end after the instant records nothing."""
    async with opened(postgres_url) as api, opened(postgres_url) as worker:
        assert api.records_answers_by
        soon = utcnow() + timedelta(seconds=60)
        cases = {"in-time": soon, "gave-up": soon, "late": utcnow() - timedelta(seconds=1), "plain": None}
        for key, answer_by in cases.items():
            await api.create_job(make_job(key), idempotency=Idempotency(key, "h"), answer_by=answer_by)
        await api.set_answer_status((await api.replay_idempotent("alice", Idempotency("gave-up", "h"))).job.id, 202)
        for key in cases:
            [claimed] = await worker.claim_jobs("w", operations=[key], limit=1, lease_seconds=30)
            done = await worker.finish_job(claimed.id, "w", Outcome(JobState.SUCCESS, result={}))
            assert done is not None and done.is_terminal
        statuses = {key: (await api.replay_idempotent("alice", Idempotency(key, "h"))).answer_status for key in cases}
        assert statuses == {"in-time": 200, "gave-up": 202, "late": 202, "plain": 202}
        # any end counts: a queued job cancelled by the deadline ends at once, and says 200 too
        created = await api.create_job(make_job("cancelled"), idempotency=Idempotency("c", "h"), answer_by=soon)
        await api.cancel_job(created.job.id)
        replay = await api.replay_idempotent("alice", Idempotency("c", "h"))
        assert replay is not None and replay.job.state is JobState.FAILURE and replay.answer_status == 200


async def test_a_store_that_cannot_record_answers_by_their_end_refuses_answer_by(tmp_path: Any) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    await store.open()
    try:
        assert not store.records_answers_by
        with pytest.raises(ValueError, match="answer_by"):
            await store.create_job(make_job(), answer_by=utcnow())
        assert await store.list_jobs(JobQuery()) == []
    finally:
        await store.close()


# -- keys seen (the filter of Idempotency-Keys, tarefa.store.postgres module doc) -------------------


def _count_reads(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The store's reads from now on (each a program run on the pool)."""
    reads: list[object] = []
    read = store._read

    async def counted(program: Any) -> Any:
        reads.append(program)
        return await read(program)

    monkeypatch.setattr(store, "_read", counted)
    return reads


async def _scanned(store: PostgresStore) -> None:
    await _wait(lambda: store._keys is not None and store._keys.scanned, "the scan of the keys")


async def test_a_new_key_costs_no_read_and_every_key_stored_anywhere_is_replayed(
    postgres_url: str, listen: Listen, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tarefa.store.postgres as postgres

    monkeypatch.setattr(postgres, "KEYS_FRESH", 60.0)  # a slow machine's pauses: the filter still answers
    async with opened(postgres_url) as before:
        first = await before.create_job(make_job(), idempotency=Idempotency("k-before", "h"))
    async with opened(postgres_url) as api, opened(postgres_url) as other:
        await _scanned(api)
        heard = listen(api)
        # another process's keys: one alone (its insert is one statement), five in one batch
        alone = await other.create_job(make_job(), idempotency=Idempotency("k-alone", "h"))
        batch = await asyncio.gather(
            *(other.create_job(make_job(), idempotency=Idempotency(f"k-batch-{n}", "h")) for n in range(5))
        )
        bea = dataclasses.replace(make_job(), owner="bea")
        ours = await api.create_job(bea, idempotency=Idempotency("k-ours", "h"))
        # an insert that is also its claim (the full rule of the store, not the one statement)
        claimed = await other.create_job(
            make_job(), idempotency=Idempotency("k-claimed", "h"), claim=Claim("w9", LEASE)
        )
        assert claimed.claimed is not None
        await heard.wait_for(lambda: all(heard.of(c.job.id) for c in [alone, claimed, *batch]), what="the inserts")
        reads = _count_reads(api, monkeypatch)
        expected = {"k-before": first, "k-alone": alone, "k-ours": ours, "k-claimed": claimed}
        expected |= {f"k-batch-{n}": c for n, c in enumerate(batch)}
        for key, created in expected.items():
            replayed = await api.replay_idempotent(created.job.owner or "", Idempotency(key, "h"))
            assert replayed is not None and replayed.job.id == created.job.id, key
        assert len(reads) == len(expected)  # each one is read
        new = [await api.replay_idempotent(owner, Idempotency(f"new-{n}", "h")) for n in range(200)
               for owner in ("alice", "bea")]  # fmt: skip
        assert new == [None] * 400
        assert len(reads) <= len(expected) + 4  # a false positive reads (0.2 % of new keys here)
        assert await api.replay_idempotent("bea", Idempotency("k-alone", "h")) is None  # alice's key, not bea's


async def test_a_crowded_filter_of_keys_is_scanned_again_into_a_bigger_one(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tarefa.store.postgres as postgres
    from tarefa.store import seen_keys

    monkeypatch.setattr(postgres, "KEYS_FRESH", 60.0)
    monkeypatch.setattr(seen_keys, "MIN_BITS", 1024)  # 64 pairs
    async with opened(postgres_url) as api, opened(postgres_url) as other:
        await _scanned(api)
        mine = [await api.create_job(make_job(), idempotency=Idempotency(f"mine-{n}", "h")) for n in range(150)]
        theirs = await asyncio.gather(
            *(other.create_job(make_job(), idempotency=Idempotency(f"theirs-{n}", "h")) for n in range(150))
        )
        stored = {f"mine-{n}": c for n, c in enumerate(mine)} | {f"theirs-{n}": c for n, c in enumerate(theirs)}

        def grown() -> bool:  # the last scan has ended into a filter big enough, holding every key
            keys, scan = api._keys, api._key_scan
            return (keys is not None and scan is not None and scan.done() and keys._filter.capacity >= 300
                    and all(keys.may_hold("alice", k) for k in stored))  # fmt: skip

        await _wait(grown, "a filter grown to every key")
        reads = _count_reads(api, monkeypatch)
        for key, created in stored.items():
            replayed = await api.replay_idempotent("alice", Idempotency(key, "h"))
            assert replayed is not None and replayed.job.id == created.job.id, key
        assert [await api.replay_idempotent("alice", Idempotency(f"new-{n}", "h")) for n in range(200)] == [None] * 200
        assert len(reads) <= len(stored) + 4


async def test_keys_stored_while_the_listener_was_down_are_read_then_caught_up(
    postgres_url: str, postgres_admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tarefa.store.postgres as postgres

    monkeypatch.setattr(postgres, "KEYS_FRESH", 60.0)
    async with opened(postgres_url, reconnect_delay=1.0) as api, opened(postgres_url) as other:
        await _scanned(api)
        with postgres_admin(postgres_url) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (api.listen_backend_pid,))
        await _wait(lambda: not api.listening.is_set(), "the listener to notice")
        away = await other.create_job(make_job(), idempotency=Idempotency("k-away", "h"))
        assert not api.listening.is_set(), "the insert was meant to happen while it was disconnected"
        replayed = await api.replay_idempotent("alice", Idempotency("k-away", "h"))  # read: not heard
        assert replayed is not None and replayed.job.id == away.job.id
        await _wait(lambda: api.listening.is_set(), "the reconnection")
        reads = _count_reads(api, monkeypatch)
        replayed = await api.replay_idempotent("alice", Idempotency("k-away", "h"))  # caught up: in the filter
        assert replayed is not None and replayed.job.id == away.job.id and len(reads) == 1


async def test_a_listener_not_heard_lately_reads_every_key(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import tarefa.store.postgres as postgres

    async with opened(postgres_url) as api:
        await _scanned(api)
        monkeypatch.setattr(postgres, "KEYS_FRESH", 0.0)  # nothing heard within no time: the filter is silent
        reads = _count_reads(api, monkeypatch)
        assert [await api.replay_idempotent("alice", Idempotency(f"n-{n}", "h")) for n in range(5)] == [None] * 5
        assert len(reads) == 5


async def test_a_notification_of_an_older_tarefa_turns_the_filter_off(
    postgres_url: str, postgres_admin: Admin, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import tarefa.store.postgres as postgres

    monkeypatch.setattr(postgres, "KEYS_FRESH", 60.0)
    async with opened(postgres_url) as api:
        await _scanned(api)
        reads = _count_reads(api, monkeypatch)
        assert await api.replay_idempotent("alice", Idempotency("n-1", "h")) is None and reads == []
        with postgres_admin(postgres_url) as conn:  # as a tarefa that names no keys announces an insert
            conn.execute("SELECT pg_notify('tarefa_jobs', %s)", ('{"o":"0123456789abcdef","c":[]}',))
        await _wait(lambda: api._keys is None, "the old notification")
        assert "older tarefa" in caplog.text
        assert [await api.replay_idempotent("alice", Idempotency(f"n-{n}", "h")) for n in range(3)] == [None] * 3
        assert len(reads) == 3


def test_an_announced_insert_names_its_key_in_one_payload_or_in_a_batch() -> None:
    from tarefa.store.postgres_listen import NOTIFY_LIMIT, decode_changes

    job = make_job(input={"text": 'é ✓ " \\ \n'})
    event = numbered([event_of(job)], [7])[0]
    parts = announcement("origin1", job, 'key "é" \\')
    assert parts is not None
    payload = parts["announce_before"] + "7" + parts["announce_after"]
    assert payload == encode_changes("origin1", [JobChange(job.id, job, event, 'key "é" \\')])[0]
    origin, entries, keys = decode_changes(payload)
    assert (origin, entries, keys) == ("origin1", [JobChange(job.id, job, event)], [("alice", 'key "é" \\')])
    # Large jobs and long keys: every payload stays under the limit, and every key is named once.
    big = [make_job(input={"blob": "x" * 6_000}) for _ in range(3)]
    changes = [JobChange(j.id, j, event_of(j), "ключ" * 60 + str(n)) for n, j in enumerate(big)]
    payloads = encode_changes("origin1", changes)
    assert all(len(p.encode()) <= NOTIFY_LIMIT for p in payloads)
    named = [key for p in payloads for _, key in decode_changes(p)[2] or []]
    assert named == [c.key for c in changes]
    # A pair too long to name: its payload says so, and turns the other processes' filters off.
    long = JobChange(job.id, job, event, "k" * 2_000)
    assert announcement("origin1", job, long.key) is None  # left to the batch's encoding
    [payload] = encode_changes("origin1", [JobChange(job.id, job, event, "short"), long])
    assert decode_changes(payload)[2] is None
