"""The callback outbox on every store (SPEC §10): a delivery is written in the transaction of the
event it announces, claimed by one worker at a time under a lease, and every attempt is kept
until the job is purged. ``store`` is each backend (conftest)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from tarefa.model import Job, JobState, new_job, utcnow
from tarefa.store import Outcome, Store, StoreError, open_store, steps
from tarefa.store.outbox import DELIVERED, FAILED, CallbackAttempt, CallbackDelivery, deliveries_for, from_snapshot

pytestmark = pytest.mark.anyio

LEASE = 30.0
URL = "https://hooks.example.com/tarefa"
SUCCESS = Outcome(JobState.SUCCESS, result={"ok": True})


def job_with_callback(events: str = "terminal", **kw: Any) -> Job:
    return new_job("thing.make", now=utcnow(), owner="alice", callback={"url": URL, "events": events}, **kw)


async def run_to_end(store: Store, job: Job) -> Job:
    """Create, claim, report once, succeed: four events."""
    await store.create_job(job)
    [claimed] = await store.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)
    assert claimed.id == job.id
    await store.report_progress(job.id, "w1", message="half way", progress=50)
    done = await store.finish_job(job.id, "w1", SUCCESS)
    assert done is not None
    return done


async def claim_all(store: Store, worker: str = "cb1", **kw: Any) -> list[CallbackDelivery]:
    return await store.claim_callbacks(worker, limit=100, lease_seconds=kw.pop("lease_seconds", LEASE), **kw)


def attempt(delivery: CallbackDelivery, outcome: str, status: int | None = None) -> CallbackAttempt:
    error = None if status is not None else "ConnectError: refused"
    return CallbackAttempt(delivery.id, delivery.job_id, delivery.seq, delivery.url, utcnow(), 0.01, status, error,
                           outcome)  # fmt: skip


async def test_a_job_without_a_callback_queues_nothing(store: Store) -> None:
    await run_to_end(store, new_job("thing.make", now=utcnow(), owner="alice"))
    assert await claim_all(store) == []


async def test_by_default_only_the_terminal_event_is_delivered(store: Store) -> None:
    done = await run_to_end(store, job_with_callback())
    [delivery] = await claim_all(store)
    events = await store.list_events(done.id)
    assert events is not None and delivery.seq == events[-1].seq and delivery.url == URL
    job, event = from_snapshot(delivery.body)
    assert job.state is JobState.SUCCESS and job.result == {"ok": True} and job.last_modified == done.last_modified
    assert event == dataclasses.replace(events[-1], operation=event.operation, owner=event.owner)


async def test_with_all_events_every_event_is_delivered_with_its_own_snapshot(store: Store) -> None:
    done = await run_to_end(store, job_with_callback("all"))
    deliveries = sorted(await claim_all(store), key=lambda d: d.seq)
    events = await store.list_events(done.id)
    assert events is not None and [d.seq for d in deliveries] == [e.seq for e in events] and len(events) == 4
    states = [from_snapshot(d.body)[0].state for d in deliveries]
    assert states == [JobState.QUEUED, JobState.RUNNING, JobState.RUNNING, JobState.SUCCESS]
    assert len({d.id for d in deliveries}) == 4


async def test_a_delivery_is_written_in_the_transaction_of_its_event(store: Store) -> None:
    """A write that fails after its event and its outbox row were written keeps neither."""
    job = job_with_callback("all")

    def program() -> steps.Program[None]:
        event = yield steps.InsertJob(job, None, None)
        yield steps.QueueCallbacks(deliveries_for([(job, event)], utcnow()))
        raise StoreError("the transaction fails after the outbox row")

    with pytest.raises(StoreError, match="after the outbox row"):
        await store._write(program)
    assert await store.get_job(job.id) is None
    assert await claim_all(store) == []
    await store.create_job(job)  # the same job, committed: its event and its delivery, together
    [delivery] = await claim_all(store)
    assert delivery.job_id == job.id


async def test_a_claimed_delivery_is_leased_to_one_worker_until_its_lease_runs_out(store: Store) -> None:
    await run_to_end(store, job_with_callback())
    [first] = await claim_all(store, "cb1", lease_seconds=0.3)
    assert await claim_all(store, "cb2") == []
    await asyncio.sleep(0.4)
    [again] = await claim_all(store, "cb2")
    assert again.id == first.id and again.body == first.body  # the same webhook-id, for deduplication


async def test_recover_claims_what_a_crashed_process_had_leased(store: Store) -> None:
    await run_to_end(store, job_with_callback())
    [first] = await claim_all(store, "gone")
    assert await claim_all(store, "cb2") == []
    [again] = await claim_all(store, "cb2", recover=True)
    assert again.id == first.id


async def test_renewed_leases_hold_and_a_lease_renewed_to_now_frees_the_delivery(store: Store) -> None:
    await run_to_end(store, job_with_callback())
    [first] = await claim_all(store, "cb1", lease_seconds=0.3)
    await store.renew_callback_leases("cb1", [first.id], 30.0)
    await asyncio.sleep(0.4)
    assert await claim_all(store, "cb2") == []
    await store.renew_callback_leases("cb2", [first.id], 0.0)  # not cb2's: changes nothing
    assert await claim_all(store, "cb2") == []
    await store.renew_callback_leases("cb1", [first.id], 0.0)
    assert [d.id for d in await claim_all(store, "cb2")] == [first.id]


async def test_attempts_are_recorded_a_failed_one_is_due_again_and_a_final_one_ends_it(store: Store) -> None:
    done = await run_to_end(store, job_with_callback())
    [delivery] = await claim_all(store)
    await store.record_callback_attempt(attempt(delivery, FAILED), utcnow() + timedelta(seconds=0.3))
    assert await claim_all(store) == []  # not due yet
    await asyncio.sleep(0.4)
    [again] = await claim_all(store)
    assert again.id == delivery.id and again.attempts == 1
    await store.record_callback_attempt(attempt(again, DELIVERED, 204), None)
    await asyncio.sleep(0.05)
    assert await claim_all(store, recover=True) == []
    attempts = await store.list_callback_attempts(done.id)
    assert attempts is not None and [(a.outcome, a.status) for a in attempts] == [(FAILED, None), (DELIVERED, 204)]
    assert attempts[0].num < attempts[1].num and attempts[0].error == "ConnectError: refused"
    later = await store.list_callback_attempts(done.id, after=attempts[0].num)
    assert later is not None and [a.num for a in later] == [attempts[1].num]
    assert await store.list_callback_attempts(done.id, owner="bob") is None
    assert await store.list_callback_attempts("AAAAAAAAAAAAAAAAAAAAAA") is None


async def test_deleting_a_job_deletes_its_deliveries_and_attempts(store: Store) -> None:
    done = await run_to_end(store, job_with_callback("all"))
    deliveries = await claim_all(store, lease_seconds=0.1)
    await store.record_callback_attempt(attempt(deliveries[0], DELIVERED, 200), None)
    assert await store.delete_job(done.id)
    await asyncio.sleep(0.15)
    assert await claim_all(store, recover=True) == []
    assert await store.list_callback_attempts(done.id) is None
    other = await run_to_end(store, job_with_callback())
    assert await store.purge_jobs(utcnow() + timedelta(seconds=1)) == 1
    assert await claim_all(store, recover=True) == [] and await store.get_job(other.id) is None


async def test_concurrent_claims_never_share_a_delivery(store_url: str, store: Store) -> None:
    for _ in range(12):
        await run_to_end(store, job_with_callback())
    others = [store] if store.exclusive else [store, open_store(store_url), open_store(store_url)]
    for other in others[1:]:
        await other.open()
    try:
        claims = await asyncio.gather(
            *(s.claim_callbacks(f"cb{i}", limit=2, lease_seconds=LEASE) for i, s in enumerate(others * 4))
        )
    finally:
        for other in others[1:]:
            await other.close()
    ids = [d.id for claim in claims for d in claim]
    rest = [d.id for d in await claim_all(store)]  # those skipped while another claim held them
    assert len(ids) == len(set(ids)) and sorted(ids + rest) == sorted(set(ids + rest)) and len(ids + rest) == 12
