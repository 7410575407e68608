"""The store contract: one suite, run against every backend (``store`` is parametrized in conftest).

Each test states a behaviour the engine relies on (see :mod:`tarefa.store.base`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tarefa.model import Job, JobError, JobEvent, JobState, new_job, utcnow
from tarefa.store import (
    Claim,
    Created,
    DocumentKind,
    EventQuery,
    Idempotency,
    IdempotencyMismatch,
    JobAlreadyTerminal,
    JobNotTerminal,
    JobQuery,
    Outcome,
    ResourceBusy,
    Store,
    open_store,
)

if TYPE_CHECKING:
    from conftest import Recorder

pytestmark = pytest.mark.anyio

Listen = Callable[[Store], "Recorder"]
LEASE = 30.0


def make_job(operation: str = "thing.make", *, owner: str = "alice", now: datetime | None = None, **kw: Any) -> Job:
    return new_job(operation, now=now or utcnow(), owner=owner, **kw)


async def create(store: Store, operation: str = "thing.make", **kw: Any) -> Job:
    return (await store.create_job(make_job(operation, **kw))).job


async def start_one(store: Store, operation: str = "thing.make", *, worker: str = "w1", **kw: Any) -> Job:
    """Create a job and claim it (the store holds only this queued job of ``operation``)."""
    job = await create(store, operation, **kw)
    claimed = await store.claim_jobs(worker, operations=[operation], limit=1, lease_seconds=LEASE)
    assert [c.id for c in claimed] == [job.id]
    return claimed[0]


SUCCESS = Outcome(JobState.SUCCESS, result={"ok": True})


async def finished_one(store: Store, **kw: Any) -> Job:
    job = await start_one(store, **kw)
    done = await store.finish_job(job.id, "w1", SUCCESS)
    assert done is not None
    return done


# -- create and read --------------------------------------------------------------------------------


async def test_create_then_get_round_trips_every_field(store: Store) -> None:
    job = make_job(input={"name": "n1", "nested": [1, 2.5, None, "é", {"deep": True}]}, resource="/api/x/1")
    job = dataclasses.replace(job, max_attempts=3, message="Queued ✓")
    assert await store.create_job(job) == Created(job, created=True, answer_status=202)
    assert await store.get_job(job.id) == job
    assert await store.get_job(job.id, owner="alice") == job


async def test_get_hides_other_owners_jobs_and_unknown_ids(store: Store) -> None:
    job = await create(store, owner="alice")
    assert await store.get_job(job.id, owner="bob") is None
    assert await store.get_job("no-such-job") is None
    assert await store.get_job("no-such-job", owner="alice") is None


async def test_failure_round_trips_error_and_success_result(store: Store) -> None:
    failing = await start_one(store, "a")
    failed = await store.finish_job(failing.id, "w1", Outcome(JobState.FAILURE, error_code="boom", error_message="Bad"))
    assert failed is not None and failed.error == JobError("boom", "Bad") and failed.state is JobState.FAILURE
    assert failed.end_time is not None and failed.lease_owner is None and failed.result is None
    assert await store.get_job(failing.id) == failed
    succeeding = await start_one(store, "b")
    result = {"list": [1, "two", 3.5, None], "n": 10**15}
    done = await store.finish_job(succeeding.id, "w1", Outcome(JobState.SUCCESS, result=result, message="All done"))
    assert done is not None and done.result == result and done.message == "All done" and done.error is None
    assert await store.get_job(succeeding.id) == done


# -- idempotency ------------------------------------------------------------------------------------


async def test_idempotency_replay_returns_the_first_job_as_it_is_now(store: Store) -> None:
    key = Idempotency("key-1", "hash-a")
    first = await store.create_job(make_job(), idempotency=key)
    assert first.created
    again = await store.create_job(make_job(), idempotency=key)
    assert (again.created, again.job, again.answer_status) == (False, first.job, 202)
    claimed = await store.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)
    await store.set_answer_status(first.job.id, 200)
    replay = await store.create_job(make_job(), idempotency=key)
    assert replay == Created(claimed[0], created=False, answer_status=200)
    assert await store.replay_idempotent("alice", key) == replay
    assert await store.replay_idempotent("alice", Idempotency("new-key", "hash-a")) is None
    assert [job.id for job in await store.list_jobs(JobQuery())] == [first.job.id]


async def test_an_end_records_the_first_answer_status_in_its_own_transaction(store: Store) -> None:
    key = Idempotency("key-held", "hash-a")
    first = await store.create_job(make_job(), idempotency=key)
    claimed = await store.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)
    done = await store.finish_job(claimed[0].id, "w1", Outcome(JobState.SUCCESS, result={}), answer_status=200)
    assert done is not None and done.state is JobState.SUCCESS
    assert await store.replay_idempotent("alice", key) == Created(done, created=False, answer_status=200)
    # an end by a worker that no longer holds the job records nothing
    other = await store.create_job(make_job(), idempotency=Idempotency("key-lost", "hash-a"))
    await store.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)
    lost = await store.finish_job(other.job.id, "w2", Outcome(JobState.SUCCESS, result={}), answer_status=200)
    assert lost is None
    replay = await store.replay_idempotent("alice", Idempotency("key-lost", "hash-a"))
    assert replay is not None and replay.answer_status == 202
    assert first.created


async def test_idempotency_key_with_another_request_is_a_mismatch(store: Store) -> None:
    first = await store.create_job(make_job(), idempotency=Idempotency("key-1", "hash-a"))
    with pytest.raises(IdempotencyMismatch) as info:
        await store.create_job(make_job(), idempotency=Idempotency("key-1", "hash-b"))
    assert (info.value.key, info.value.job_id) == ("key-1", first.job.id)
    with pytest.raises(IdempotencyMismatch):
        await store.replay_idempotent("alice", Idempotency("key-1", "hash-b"))
    assert len(await store.list_jobs(JobQuery())) == 1


async def test_idempotency_keys_are_per_owner(store: Store) -> None:
    key = Idempotency("key-1", "hash-a")
    alices = await store.create_job(make_job(owner="alice"), idempotency=key)
    bobs = await store.create_job(make_job(owner="bob"), idempotency=key)
    assert alices.created and bobs.created and alices.job.id != bobs.job.id


async def test_concurrent_requests_with_one_key_create_one_job(store: Store) -> None:
    key = Idempotency("key-1", "hash-a")
    results = await asyncio.gather(*(store.create_job(make_job(), idempotency=key) for _ in range(10)))
    assert sum(result.created for result in results) == 1
    assert len({result.job.id for result in results}) == 1


# -- resource keys ----------------------------------------------------------------------------------


async def test_resource_key_is_busy_until_its_job_ends(store: Store) -> None:
    first = (await store.create_job(make_job(), resource_key="cluster:1")).job
    with pytest.raises(ResourceBusy) as info:
        await store.create_job(make_job(), resource_key="cluster:1")
    assert (info.value.resource_key, info.value.job_id) == ("cluster:1", first.id)
    assert (await store.create_job(make_job(), resource_key="cluster:2")).created
    await store.claim_jobs("w1", operations=["thing.make"], limit=10, lease_seconds=LEASE)
    with pytest.raises(ResourceBusy):
        await store.create_job(make_job(), resource_key="cluster:1")
    await store.finish_job(first.id, "w1", SUCCESS)
    assert (await store.create_job(make_job(), resource_key="cluster:1")).created


async def test_cancelled_job_frees_its_resource_key(store: Store) -> None:
    first = (await store.create_job(make_job(), resource_key="cluster:1")).job
    await store.cancel_job(first.id)
    assert (await store.create_job(make_job(), resource_key="cluster:1")).created


async def test_concurrent_requests_on_one_resource_key_create_one_job(store: Store) -> None:
    async def attempt() -> Created | ResourceBusy:
        try:
            return await store.create_job(make_job(), resource_key="cluster:1")
        except ResourceBusy as busy:
            return busy

    results = await asyncio.gather(*(attempt() for _ in range(10)))
    created = [result for result in results if isinstance(result, Created)]
    assert len(created) == 1
    assert {result.job_id for result in results if isinstance(result, ResourceBusy)} == {created[0].job.id}


# -- listing ------------------------------------------------------------------------------------------


async def test_list_filters_by_state_operation_and_owner(store: Store) -> None:
    queued = await create(store, "a")
    running = await start_one(store, operation="b")
    done = await finished_one(store, operation="c")
    bobs = await create(store, "a", owner="bob")

    async def ids(**kw: Any) -> set[str]:
        return {job.id for job in await store.list_jobs(JobQuery(**kw))}

    assert await ids() == {queued.id, running.id, done.id, bobs.id}
    assert await ids(states=frozenset({JobState.RUNNING})) == {running.id}
    assert await ids(states=frozenset({JobState.QUEUED, JobState.RUNNING})) == {queued.id, running.id, bobs.id}
    assert await ids(states=frozenset({JobState.SUCCESS, JobState.FAILURE})) == {done.id}
    assert await ids(operation="a") == {queued.id, bobs.id}
    assert await ids(owner="alice", operation="a") == {queued.id}
    assert await ids(owner="carol") == set()


async def _varied_jobs(store: Store) -> list[Job]:
    """Nine jobs, three of them created in the same microsecond, some changed since."""
    same = utcnow()
    for i in range(9):
        await store.create_job(make_job(now=same if i < 3 else None))
    for job in await store.claim_jobs("w1", operations=["thing.make"], limit=4, lease_seconds=LEASE):
        await store.report_progress(job.id, "w1", message="half", progress=50)
    return await store.list_jobs(JobQuery(limit=100))


@pytest.mark.parametrize("order_by", ["create_time", "last_modified"])
@pytest.mark.parametrize("descending", [True, False])
async def test_list_orders_and_pages_with_ties_broken_by_id(store: Store, order_by: str, descending: bool) -> None:
    jobs = await _varied_jobs(store)
    expected = sorted(jobs, key=lambda job: (getattr(job, order_by), job.id), reverse=descending)
    query = JobQuery(order_by=order_by, descending=descending, limit=100)  # type: ignore[arg-type]
    assert [job.id for job in await store.list_jobs(query)] == [job.id for job in expected]
    paged: list[Job] = []
    page = await store.list_jobs(dataclasses.replace(query, limit=2))
    while page:
        paged += page
        last = page[-1]
        page = await store.list_jobs(dataclasses.replace(query, limit=2, after=(getattr(last, order_by), last.id)))
    assert [job.id for job in paged] == [job.id for job in expected]


@pytest.mark.parametrize("descending", [True, False])
async def test_paging_is_stable_while_jobs_are_added(store: Store, descending: bool) -> None:
    originals = [await create(store) for _ in range(12)]
    expected = [job.id for job in (reversed(originals) if descending else originals)]
    query = JobQuery(descending=descending, limit=5)
    seen: list[str] = []
    page = await store.list_jobs(query)
    for _ in range(20):
        if not page:
            break
        seen += [job.id for job in page]
        for _ in range(3 if len(seen) < len(originals) else 0):
            await create(store)
        page = await store.list_jobs(dataclasses.replace(query, after=(page[-1].create_time, page[-1].id)))
    new_ones = [job_id for job_id in seen if job_id not in expected]
    assert [job_id for job_id in seen if job_id in expected] == expected
    assert len(seen) == len(set(seen)) and (not descending or not new_ones)


# -- claiming -----------------------------------------------------------------------------------------


async def test_claim_takes_listed_operations_oldest_first_up_to_limit(store: Store) -> None:
    a1, _b1, a2, a3 = [await create(store, op) for op in ("a", "b", "a", "a")]
    before = utcnow()
    claimed = await store.claim_jobs("w1", operations=["a"], limit=2, lease_seconds=LEASE)
    assert [job.id for job in claimed] == [a1.id, a2.id]
    for job in claimed:
        assert (job.state, job.lease_owner, job.attempts, job.message) == (JobState.RUNNING, "w1", 1, "Running")
        assert job.start_time is not None and job.start_time >= before
        assert job.lease_expires is not None
        assert timedelta(seconds=LEASE - 5) < job.lease_expires - before < timedelta(seconds=LEASE + 5)
        assert await store.get_job(job.id) == job
    assert [job.id for job in await store.claim_jobs("w2", operations=["a"], limit=5, lease_seconds=LEASE)] == [a3.id]
    assert await store.claim_jobs("w2", operations=["a"], limit=5, lease_seconds=LEASE) == []
    assert await store.claim_jobs("w2", operations=[], limit=5, lease_seconds=LEASE) == []
    assert await store.claim_jobs("w2", operations=["b"], limit=0, lease_seconds=LEASE) == []


async def test_concurrent_claimers_claim_every_job_exactly_once(store: Store) -> None:
    await asyncio.gather(*(create(store) for _ in range(200)))
    claims: Counter[str] = Counter()

    async def claimer(worker: str) -> None:
        while jobs := await store.claim_jobs(worker, operations=["thing.make"], limit=7, lease_seconds=LEASE):
            claims.update(job.id for job in jobs)
            assert all(job.lease_owner == worker for job in jobs)

    async with anyio.create_task_group() as group:
        for n in range(8):
            group.start_soon(claimer, f"w{n}")
    assert len(claims) == 200 and set(claims.values()) == {1}


# -- running jobs -------------------------------------------------------------------------------------


async def test_progress_is_reported_only_by_the_lease_holder(store: Store) -> None:
    job = await start_one(store)
    reported = await store.report_progress(job.id, "w1", message="Step 1", progress=40)
    assert reported is not None and (reported.message, reported.progress) == ("Step 1", 40)
    assert reported.last_modified > job.last_modified and await store.get_job(job.id) == reported
    kept = await store.report_progress(job.id, "w1", message=None, progress=None)
    assert kept is not None and (kept.message, kept.progress) == ("Step 1", 40)
    assert await store.report_progress(job.id, "w2", message="Not mine", progress=1) is None
    assert await store.report_progress("no-such-job", "w1", message="x", progress=1) is None
    queued = await create(store, "other")
    assert await store.report_progress(queued.id, "w1", message="x", progress=1) is None
    await store.finish_job(job.id, "w1", SUCCESS)
    assert await store.report_progress(job.id, "w1", message="late", progress=99) is None


async def test_progress_out_of_range_is_refused_without_a_change(store: Store) -> None:
    job = await start_one(store)
    with pytest.raises(ValueError):
        await store.report_progress(job.id, "w1", message="x", progress=101)
    assert await store.get_job(job.id) == job


async def test_jobs_are_finished_only_by_the_lease_holder_and_once(store: Store) -> None:
    job = await start_one(store)
    assert await store.finish_job(job.id, "w2", SUCCESS) is None
    done = await store.finish_job(job.id, "w1", SUCCESS)
    assert done is not None and done.state is JobState.SUCCESS and done.end_time is not None
    assert await store.finish_job(job.id, "w1", SUCCESS) is None
    assert await store.finish_job("no-such-job", "w1", SUCCESS) is None
    assert await store.get_job(job.id) == done


async def test_a_job_claimed_in_its_insert_is_one_running_row_with_both_events(store: Store, listen: Listen) -> None:
    recorder = listen(store)
    key = Idempotency("key-claimed", "hash-a")
    job = make_job()
    created = await store.create_job(job, idempotency=key, resource_key="thing/1", claim=Claim("w1", LEASE))
    started = created.claimed
    assert created.created and created.job == job and started is not None
    assert (started.state, started.lease_owner, started.start_time) == (JobState.RUNNING, "w1", started.last_modified)
    assert await store.get_job(job.id) == started
    events = await store.list_events(job.id)
    assert events is not None and [e.state for e in events] == [JobState.QUEUED, JobState.RUNNING]
    assert events[1].seq == events[0].seq + 1 and events[1].time == started.last_modified
    await recorder.wait_for(lambda: recorder.heard(job.id, lambda j: j == started), what="the claim")
    assert [j.state for j in recorder.of(job.id)] == [JobState.QUEUED, JobState.RUNNING]
    # its key and its resource key are taken as by any insert; nothing else is inserted
    again = await store.create_job(make_job(), idempotency=key, claim=Claim("w1", LEASE))
    assert again == Created(started, created=False, answer_status=202)
    with pytest.raises(ResourceBusy):
        await store.create_job(make_job(), resource_key="thing/1", claim=Claim("w1", LEASE))
    assert [j.id for j in await store.list_jobs(JobQuery())] == [job.id]
    done = await store.finish_job(job.id, "w1", SUCCESS, answer_status=200)
    assert done is not None and done.state is JobState.SUCCESS and await store.get_job(job.id) == done
    assert await store.replay_idempotent("alice", key) == Created(done, created=False, answer_status=200)


async def test_an_end_applies_to_the_job_as_it_is_when_it_changed_since_its_claim(store: Store) -> None:
    """The end of a job claimed here starts from the version this store saved, unless the row
    changed since: a progress report, a cancel request, a renewed lease, another worker's claim."""
    job = await start_one(store)
    reported = await store.report_progress(job.id, "w1", message="half", progress=50)
    asked = await store.cancel_job(job.id)
    assert reported is not None and asked is not None and asked.cancel_requested
    done = await store.finish_job(job.id, "w1", SUCCESS)
    assert done is not None and done.state is JobState.SUCCESS and done.cancel_requested
    assert await store.get_job(job.id) == done
    renewed = await start_one(store, "renewed")
    assert await store.renew_leases("w1", [renewed.id], 600.0) == {renewed.id}
    ended = await store.finish_job(renewed.id, "w1", SUCCESS)
    assert ended is not None and ended.state is JobState.SUCCESS and await store.get_job(renewed.id) == ended
    # lost by w1 (recovered), then claimed by w2: w1's end changes nothing, w2's ends it
    taken = await start_one(store, "taken", max_attempts=2)
    assert [j.id for j in await store.recover_jobs(expired_only=False)] == [taken.id]
    again = await store.claim_jobs("w2", operations=["taken"], limit=1, lease_seconds=LEASE)
    assert [j.id for j in again] == [taken.id]
    assert await store.finish_job(taken.id, "w1", SUCCESS) is None
    theirs = await store.finish_job(taken.id, "w2", SUCCESS)
    assert theirs is not None and theirs.state is JobState.SUCCESS and await store.get_job(taken.id) == theirs


async def test_renewing_extends_only_the_leases_still_held(store: Store) -> None:
    mine = [await start_one(store, op) for op in ("a", "b")]
    theirs = await start_one(store, "c", worker="w2")
    done = await finished_one(store, operation="d")
    ids = [job.id for job in mine] + [theirs.id, done.id, "no-such-job"]
    assert await store.renew_leases("w1", ids, 600.0) == {job.id for job in mine}
    assert await store.renew_leases("w1", [], 600.0) == set()
    for job in mine:
        renewed = await store.get_job(job.id)
        assert renewed is not None and renewed.lease_expires is not None and job.lease_expires is not None
        assert renewed.lease_expires > job.lease_expires + timedelta(seconds=500)
        assert renewed.last_modified == job.last_modified  # not a visible change
    assert await store.get_job(theirs.id) == theirs


async def test_after_a_renewal_the_version_kept_for_an_end_is_the_row(store: Store) -> None:
    """The version a store keeps of a job it claimed (``_held``: its end is a write checked
    against that version, with no read) follows a renewal of the lease; a lease renewed no
    longer (the job was taken by another) is dropped, and an end begun during it keeps none."""
    kept = await start_one(store, "kept")
    ending = await start_one(store, "ending")
    lost = await create(store, "lost", max_attempts=2)
    await store.claim_jobs("w1", operations=["lost"], limit=1, lease_seconds=0.05)
    await anyio.sleep(0.1)
    assert [job.id for job in await store.recover_jobs(expired_only=True)] == [lost.id]
    assert [job.id for job in await store.claim_jobs("w2", operations=["lost"], limit=1, lease_seconds=LEASE)] == [
        lost.id
    ]
    finishing = asyncio.ensure_future(store.finish_job(ending.id, "w1", SUCCESS))
    await asyncio.sleep(0)  # the end has begun (its kept version taken) before the renewal
    renewed = await store.renew_leases("w1", [kept.id, lost.id, ending.id], 600.0)
    done = await finishing
    assert done is not None and done.state is JobState.SUCCESS and await store.get_job(ending.id) == done
    assert renewed == {kept.id} and ending.id not in store._held and lost.id not in store._held
    assert store._held[kept.id] == await store.get_job(kept.id)
    ended = await store.finish_job(kept.id, "w1", SUCCESS)
    assert ended is not None and ended.state is JobState.SUCCESS and await store.get_job(kept.id) == ended
    assert kept.id not in store._held


async def test_released_jobs_are_lost_at_once(store: Store) -> None:
    retry_safe = await start_one(store, "a", max_attempts=2)
    one_shot = await start_one(store, "b")
    theirs = await start_one(store, "c", worker="w2")
    released = await store.release_jobs("w1", [retry_safe.id, one_shot.id, theirs.id])
    by_id = {job.id: job for job in released}
    assert set(by_id) == {retry_safe.id, one_shot.id}
    requeued = by_id[retry_safe.id]
    assert (requeued.state, requeued.lease_owner, requeued.attempts) == (JobState.QUEUED, None, 1)
    lost = by_id[one_shot.id]
    assert lost.state is JobState.FAILURE and lost.error is not None and lost.error.code == "worker_lost"
    assert await store.get_job(theirs.id) == theirs
    assert [await store.get_job(job.id) for job in (requeued, lost)] == [requeued, lost]
    assert await store.release_jobs("w1", []) == []


async def test_recovery_takes_expired_leases_only_unless_told_otherwise(store: Store) -> None:
    expiring = await create(store, "a")
    await store.claim_jobs("w1", operations=["a"], limit=1, lease_seconds=0.05)
    fresh = await start_one(store, "b", worker="w2")
    await anyio.sleep(0.1)
    recovered = await store.recover_jobs(expired_only=True)
    assert [job.id for job in recovered] == [expiring.id]
    assert recovered[0].state is JobState.FAILURE
    assert recovered[0].error is not None and recovered[0].error.code == "worker_lost"
    assert await store.get_job(fresh.id) == fresh
    assert [job.id for job in await store.recover_jobs(expired_only=False)] == [fresh.id]
    assert await store.recover_jobs(expired_only=False) == []


async def test_retry_safe_jobs_go_back_to_the_queue_a_bounded_number_of_times(store: Store) -> None:
    job = await create(store, max_attempts=2)
    for attempt, expected in ((1, JobState.QUEUED), (2, JobState.FAILURE)):
        claimed = await store.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        assert [(c.id, c.attempts) for c in claimed] == [(job.id, attempt)]
        [recovered] = await store.recover_jobs(expired_only=False)
        assert (recovered.state, recovered.attempts) == (expected, attempt)
    assert recovered.error is not None and recovered.error.code == "worker_lost"


async def test_lost_job_with_a_cancel_request_ends_cancelled(store: Store) -> None:
    job = await start_one(store, max_attempts=3)
    await store.cancel_job(job.id)
    [lost] = await store.release_jobs("w1", [job.id])
    assert lost.state is JobState.FAILURE and lost.error is not None and lost.error.code == "cancelled"


# -- cancel, delete, purge ----------------------------------------------------------------------------


async def test_cancelling_a_queued_job_fails_it_at_once(store: Store, listen: Listen) -> None:
    recorder = listen(store)
    job = await create(store)
    cancelled = await store.cancel_job(job.id, owner="alice")
    assert cancelled is not None and cancelled.state is JobState.FAILURE and cancelled.end_time is not None
    assert cancelled.error is not None and cancelled.error.code == "cancelled"
    assert await store.get_job(job.id) == cancelled
    await recorder.wait_for(lambda: recorder.heard(job.id, lambda j: j == cancelled), what="the cancellation")
    assert await store.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE) == []


async def test_cancelling_a_running_job_asks_it_to_stop(store: Store, listen: Listen) -> None:
    recorder = listen(store)
    job = await start_one(store)
    asked = await store.cancel_job(job.id)
    assert asked is not None and (asked.state, asked.cancel_requested) == (JobState.RUNNING, True)
    assert asked.last_modified > job.last_modified and await store.get_job(job.id) == asked
    await recorder.wait_for(lambda: recorder.heard(job.id, lambda j: j == asked), what="the cancel request")
    again = await store.cancel_job(job.id)
    assert again == asked  # asking twice is no new change
    done = await store.finish_job(job.id, "w1", Outcome(JobState.FAILURE, "cancelled", "Cancelled"))
    assert done is not None and done.state is JobState.FAILURE


async def test_cancelling_terminal_unknown_or_foreign_jobs(store: Store) -> None:
    done = await finished_one(store)
    with pytest.raises(JobAlreadyTerminal) as info:
        await store.cancel_job(done.id)
    assert info.value.job == done
    assert await store.cancel_job("no-such-job") is None
    queued = await create(store, "other")
    assert await store.cancel_job(queued.id, owner="bob") is None
    assert await store.get_job(queued.id) == queued


async def test_delete_takes_terminal_jobs_only(store: Store, listen: Listen) -> None:
    recorder = listen(store)
    done = await finished_one(store)
    queued = await create(store, "other")
    with pytest.raises(JobNotTerminal) as info:
        await store.delete_job(queued.id)
    assert info.value.job == queued
    assert await store.delete_job(done.id, owner="bob") is False
    assert await store.delete_job(done.id, owner="alice") is True
    assert await store.get_job(done.id) is None
    assert await store.delete_job(done.id) is False
    await recorder.wait_for(lambda: recorder.of(done.id)[-1:] == [None], what="the deletion")


async def test_purge_deletes_jobs_that_ended_before_the_instant(store: Store, listen: Listen) -> None:
    recorder = listen(store)
    old = [await finished_one(store, operation=f"old{i}") for i in range(3)]
    await anyio.sleep(0.002)
    cutoff = utcnow()
    await anyio.sleep(0.002)
    recent = await finished_one(store, operation="recent")
    waiting = await create(store, "waiting")
    running = await start_one(store, operation="running")
    assert await store.purge_jobs(cutoff) == 3
    assert [await store.get_job(job.id) for job in old] == [None, None, None]
    assert {job.id for job in await store.list_jobs(JobQuery())} == {recent.id, waiting.id, running.id}
    await recorder.wait_for(lambda: all(recorder.of(job.id)[-1:] == [None] for job in old), what="the purge")
    assert await store.purge_jobs(cutoff) == 0


# -- timestamps and listeners -------------------------------------------------------------------------


async def test_last_modified_strictly_increases_on_every_change(store: Store, listen: Listen) -> None:
    recorder = listen(store)
    job = await start_one(store)
    stamps = [job.last_modified]
    for step in range(60):
        reported = await store.report_progress(job.id, "w1", message=f"step {step}", progress=step)
        assert reported is not None
        stamps.append(reported.last_modified)
    assert all(later > earlier for earlier, later in itertools.pairwise(stamps))
    await recorder.wait_for(lambda: len(recorder.of(job.id)) >= 62, what="every report")
    heard = [j.last_modified for j in recorder.of(job.id) if j is not None]
    assert heard == sorted(set(heard)) and stamps[-1] == heard[-1]


async def test_listeners_hear_every_change_on_the_loop_after_commit(store: Store, listen: Listen) -> None:
    recorder = listen(store)
    reads: list[tuple[Job | None, Job | None]] = []
    tasks: list[asyncio.Task[None]] = []

    def read_back(changes: Any) -> None:  # after the commit, the change is visible to a read
        async def read(heard: Job | None, job_id: str) -> None:
            reads.append((heard, await store.get_job(job_id)))

        tasks.extend(asyncio.get_running_loop().create_task(read(c.job, c.job_id)) for c in changes)

    store.add_listener(read_back)
    steps: list[Job | None] = []
    job = await create(store)
    steps.append(job)
    for step in (
        lambda: store.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE),
        lambda: store.report_progress(job.id, "w1", message="half", progress=50),
        lambda: store.finish_job(job.id, "w1", SUCCESS),
    ):
        await recorder.wait_for(lambda: len(recorder.of(job.id)) == len(steps))
        await asyncio.gather(*tasks)
        value = await step()
        steps.append(value[0] if isinstance(value, list) else value)
    await recorder.wait_for(lambda: len(recorder.of(job.id)) == len(steps))
    await asyncio.gather(*tasks)
    assert await store.delete_job(job.id)
    steps.append(None)
    await recorder.wait_for(lambda: len(recorder.of(job.id)) == len(steps))
    await asyncio.gather(*tasks)
    assert recorder.of(job.id) == steps
    assert recorder.foreign_threads == []
    assert all(
        read is None or (heard is not None and read.last_modified >= heard.last_modified) for heard, read in reads
    )
    assert [read for heard, read in reads if heard is not None] != [] and reads[-1] == (None, None)


async def test_reads_and_lease_renewals_are_not_announced(store: Store, listen: Listen) -> None:
    job = await start_one(store)
    recorder = listen(store)
    await store.get_job(job.id)
    await store.list_jobs(JobQuery())
    await store.renew_leases("w1", [job.id], LEASE)
    await store.set_answer_status(job.id, 200)
    await anyio.sleep(0.05)
    assert recorder.of(job.id) == []


# -- history (SPEC §10) --------------------------------------------------------------------------------


def _seen(job: Job) -> tuple[Any, ...]:
    return (job.id, job.last_modified, job.state, job.message, job.progress, job.error)


def _recorded(event: JobEvent) -> tuple[Any, ...]:
    return (event.job_id, event.time, event.state, event.message, event.progress, event.error)


async def test_every_visible_change_is_an_event_of_the_jobs_history(store: Store, listen: Listen) -> None:
    recorder = listen(store)
    versions = [job := await create(store, operation="a")]
    versions += await store.claim_jobs("w1", operations=["a"], limit=1, lease_seconds=LEASE)
    for message, progress in (("Step 1", 10), ("Step 2", 60)):
        reported = await store.report_progress(job.id, "w1", message=message, progress=progress)
        assert reported is not None
        versions.append(reported)
    await store.renew_leases("w1", [job.id], LEASE)  # not a visible change: no event
    versions.append(cancelled := await store.cancel_job(job.id))
    assert cancelled is not None
    ended = await store.finish_job(
        job.id, "w1", Outcome(JobState.FAILURE, error_code="cancelled", error_message="Cancelled while running")
    )
    assert ended is not None
    versions.append(ended)
    history = await store.list_events(job.id)
    assert history is not None
    assert [_recorded(event) for event in history] == [_seen(version) for version in versions]
    seqs = [event.seq for event in history]
    assert seqs == sorted(set(seqs)) and seqs[0] > 0
    assert all(event.operation == "a" and event.owner == "alice" for event in history)
    assert history[-1].error == JobError("cancelled", "Cancelled while running") and history[-1].is_terminal
    await recorder.wait_for(lambda: len(recorder.of(job.id)) == len(versions))
    assert [change.event for change in recorder.changes if change.job_id == job.id] == history


async def test_history_pages_after_a_seq_and_hides_other_owners_jobs(store: Store) -> None:
    job = await start_one(store)
    for step in range(5):
        await store.report_progress(job.id, "w1", message=f"Step {step}", progress=step)
    history = await store.list_events(job.id)
    assert history is not None and len(history) == 7
    assert await store.list_events(job.id, after=history[2].seq, limit=2) == history[3:5]
    assert await store.list_events(job.id, after=history[-1].seq) == []
    assert await store.list_events(job.id, owner="alice", limit=1) == history[:1]
    assert await store.list_events(job.id, owner="bob") is None
    assert await store.list_events("no-such-job") is None


async def test_seq_is_unique_in_the_store_and_never_given_again(store: Store) -> None:
    first = await finished_one(store)
    others = [await create(store) for _ in range(3)]
    seqs = [event.seq for job in (first, *others) for event in await store.list_events(job.id) or []]
    assert len(seqs) == len(set(seqs)) == 6
    assert await store.delete_job(first.id)
    assert await store.list_events(first.id) is None
    latest = await create(store)
    [event] = await store.list_events(latest.id) or []
    assert event.seq > max(seqs)


async def test_history_is_purged_with_its_job(store: Store) -> None:
    done = await finished_one(store)
    kept = await create(store)
    assert await store.purge_jobs(utcnow() + timedelta(seconds=1)) == 1
    assert await store.list_events(done.id) is None
    assert [event.job_id for event in await store.list_events(kept.id) or []] == [kept.id]


async def test_events_of_every_job_page_by_seq_with_filters_and_owner(store: Store) -> None:
    a = await finished_one(store, operation="a")
    b = await create(store, operation="b", owner="bob")
    c = await start_one(store, operation="c")
    every = sorted([e for job in (a, b, c) for e in await store.list_events(job.id) or []], key=lambda event: event.seq)
    page = await store.list_all_events(EventQuery())
    assert page.events == every and page.covered == every[-1].seq
    first = await store.list_all_events(EventQuery(limit=2))
    assert first.events == every[:2] and first.covered == every[1].seq
    rest = await store.list_all_events(EventQuery(after=first.covered))
    assert rest.events == every[2:]
    assert (await store.list_all_events(EventQuery(owner="bob"))).events == [e for e in every if e.job_id == b.id]
    alice = await store.list_all_events(EventQuery(owner="alice", states=frozenset({JobState.RUNNING})))
    assert [(e.job_id, e.state) for e in alice.events] == [(a.id, JobState.RUNNING), (c.id, JobState.RUNNING)]
    assert alice.covered == every[-1].seq  # what lies beyond the last match matched no filter
    assert [e.job_id for e in (await store.list_all_events(EventQuery(operation="c"))).events] == [c.id, c.id]
    assert (await store.list_all_events(EventQuery(operation="nope"))).events == []
    done = await store.list_all_events(EventQuery(after=every[-1].seq))
    assert done.events == [] and done.covered == every[-1].seq
    beyond = await store.list_all_events(EventQuery(after=every[-1].seq + 100))
    assert beyond.events == [] and beyond.covered == every[-1].seq + 100
    assert await store.delete_job(a.id)
    assert a.id not in {e.job_id for e in (await store.list_all_events(EventQuery())).events}


async def test_a_raising_listener_neither_blocks_nor_loses_a_write(store: Store, listen: Listen) -> None:
    def broken(changes: Any) -> None:
        raise RuntimeError("a listener with a bug")

    store.add_listener(broken)
    recorder = listen(store)
    with anyio.fail_after(10):
        job = await create(store)
        [running] = await store.claim_jobs("w1", operations=["thing.make"], limit=1, lease_seconds=LEASE)
        done = await store.finish_job(job.id, "w1", SUCCESS)
        later = await create(store)
    assert done is not None and await store.get_job(job.id) == done
    await recorder.wait_for(lambda: recorder.heard(later.id))
    assert recorder.of(job.id) == [job, running, done]


# -- resources ----------------------------------------------------------------------------------------


async def test_documents_put_get_list_delete(store: Store) -> None:
    hosts, clusters = DocumentKind(store.documents, "host"), DocumentKind(store.documents, "cluster")
    for key in ("b", "a", "B", "a10", "a2"):
        assert await hosts.put(key, {"name": key, "n": [1, 2]}) is True
    await clusters.put("a", {"name": "cluster a"})
    assert await hosts.get("a") == {"name": "a", "n": [1, 2]}
    assert [doc["name"] for doc in await hosts.list()] == ["B", "a", "a10", "a2", "b"]
    assert await hosts.put("a", {"name": "changed"}, only_if_absent=True) is False
    assert await hosts.get("a") == {"name": "a", "n": [1, 2]}
    assert await hosts.put("a", {"name": "replaced"}) is True
    assert await hosts.get("a") == {"name": "replaced"}
    assert await hosts.put("c", {"name": "c"}, only_if_absent=True) is True
    assert await hosts.delete("a") is True
    assert await hosts.delete("a") is False
    assert await hosts.get("a") is None
    assert await clusters.get("a") == {"name": "cluster a"}
    assert await DocumentKind(store.documents, "nothing").list() == []


# -- life cycle ---------------------------------------------------------------------------------------


async def test_data_survives_close_and_reopen(durable_store: Store, durable_store_url: str) -> None:
    store, store_url = durable_store, durable_store_url
    done = await finished_one(store)
    queued = (await store.create_job(make_job(), idempotency=Idempotency("k", "h"), resource_key="r")).job
    history = await store.list_events(done.id)
    await DocumentKind(store.documents, "host").put("h1", {"name": "h1"})
    await store.open()  # idempotent
    await store.close()
    reopened = open_store(store_url)
    await reopened.open()
    try:
        assert await reopened.get_job(done.id) == done
        assert await reopened.get_job(queued.id) == queued
        assert await DocumentKind(reopened.documents, "host").get("h1") == {"name": "h1"}
        assert await reopened.list_events(done.id) == history
        replay = await reopened.create_job(make_job(), idempotency=Idempotency("k", "h"))
        assert replay == Created(queued, created=False)
        with pytest.raises(ResourceBusy):
            await reopened.create_job(make_job(), resource_key="r")
    finally:
        await reopened.close()


# -- the operator's figures -------------------------------------------------------------------------


async def test_count_jobs_groups_by_state_and_operation(store: Store) -> None:
    assert await store.count_jobs() == {}
    await create(store, "a.one")
    await create(store, "a.one")
    await create(store, "b.two")
    await finished_one(store)
    counts = await store.count_jobs()
    assert counts == {("queued", "a.one"): 2, ("queued", "b.two"): 1, ("success", "thing.make"): 1}


async def test_check_ready_on_a_current_schema(store: Store) -> None:
    await store.check_ready()  # raises if the store is unreachable or its schema is not current
    assert (await store.count_jobs()) == {}
